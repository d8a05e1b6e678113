package fsm

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tsstore/tsstore/segment"
)

// blockDirFS blocks the first SyncDir after a segment's .log is removed,
// once armed, until released, and says when it arrived: the directory
// fsync of a drop.
type blockDirFS struct {
	segment.FS
	mu      sync.Mutex
	armed   bool
	removed bool
	arrived chan struct{}
	release chan struct{}
}

func (f *blockDirFS) Remove(name string) error {
	f.mu.Lock()
	if f.armed && strings.HasSuffix(name, ".log") {
		f.removed = true
	}
	f.mu.Unlock()
	return f.FS.Remove(name)
}

func (f *blockDirFS) SyncDir(dir string) error {
	f.mu.Lock()
	armed := f.armed && f.removed
	if armed {
		f.armed = false
		close(f.arrived)
	}
	f.mu.Unlock()
	if armed {
		<-f.release
	}
	return f.FS.SyncDir(dir)
}

// A snapshot being taken pins the files (Snapshot, on Raft's apply
// goroutine); pin must not wait for the drops of a cut in progress, or
// appends wait for every dropped segment's unlinks and directory fsync.
// Here the cut worker is held inside the first segment's drop: pin
// returns, and the drops resume (and stop while pinned) afterwards.
func TestPinDoesNotWaitForDrops(t *testing.T) {
	fsys := &blockDirFS{FS: segment.OSFS{}, arrived: make(chan struct{}), release: make(chan struct{})}
	cfg := DefaultConfig(t.TempDir())
	cfg.Segment.SegmentBytes = 64 << 10
	cfg.Segment.FS = fsys
	p, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	mustApply(t, p, 1, mustEncodeCmd(t, CmdSetRetention, &SetRetentionCommand{Prefix: "run/", MaxBytes: 1}))
	next := fillSegments(t, p, 2, 5)
	r := p.Retention()
	cut := r.Segments[3].NextOffset // four segments go
	fsys.mu.Lock()
	fsys.armed = true
	fsys.mu.Unlock()
	if res := p.Apply(next, mustEncodeCmd(t, CmdCompact, &CompactCommand{Cut: cut, PolicyVersion: 1})); res.Err != nil {
		t.Fatal(res.Err)
	}
	select {
	case <-fsys.arrived:
	case <-time.After(30 * time.Second):
		t.Fatal("the cut worker never reached a directory fsync")
	}
	pinned := make(chan struct{})
	go func() {
		p.pin()
		close(pinned)
	}()
	select {
	case <-pinned:
	case <-time.After(30 * time.Second):
		close(fsys.release)
		t.Fatal("pin waited for the drops of the cut in progress")
	}
	close(fsys.release)
	p.unpin()
	waitDropped(t, p, cut)
}
