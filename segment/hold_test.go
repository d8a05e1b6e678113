package segment

import (
	"sync"
	"testing"
	"time"

	"github.com/tsstore/tsstore/record"
)

// blockDirFS blocks SyncDir while armed, until released.
type blockDirFS struct {
	FS
	mu      sync.Mutex
	armed   bool
	entered chan struct{}
	release chan struct{}
}

func (f *blockDirFS) SyncDir(dir string) error {
	f.mu.Lock()
	armed := f.armed
	f.armed = false
	f.mu.Unlock()
	if armed {
		close(f.entered)
		<-f.release
	}
	return f.FS.SyncDir(dir)
}

func (f *blockDirFS) arm() {
	f.mu.Lock()
	f.armed = true
	f.entered, f.release = make(chan struct{}), make(chan struct{})
	f.mu.Unlock()
}

// holds records Options.OnHold calls.
type holds struct {
	mu  sync.Mutex
	ops []string
}

func (h *holds) observe(op string, _ time.Duration) {
	h.mu.Lock()
	h.ops = append(h.ops, op)
	h.mu.Unlock()
}

func (h *holds) count(op string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, o := range h.ops {
		if o == op {
			n++
		}
	}
	return n
}

// TestHoldExcludesIO: DropSealed and ThinSealed report their hold of the
// appends' lock (Options.OnHold) once the segment list changed, and while
// their directory fsync is stuck an append and a read go through: the I/O
// of a drop or a rewrite is not inside the hold.
func TestHoldExcludesIO(t *testing.T) {
	fsys := &blockDirFS{FS: OSFS{}}
	h := &holds{}
	o := testOptions()
	o.FS = fsys
	o.OnHold = h.observe
	l := mustOpen(t, t.TempDir(), o)
	m := newMaker(300)
	fill(t, l, m, 80, 4)
	segs := l.Segments()
	if len(segs) < 4 {
		t.Fatalf("want at least 4 segments, have %d", len(segs))
	}

	stuck := func(name string, op string, run func() error) {
		t.Helper()
		fsys.arm()
		done := make(chan error, 1)
		go func() { done <- run() }()
		<-fsys.entered
		if op != "" && h.count(op) == 0 {
			t.Fatalf("%s: no %q hold reported before its directory fsync", name, op)
		}
		if err := l.Append(m.batch(t, 2)); err != nil {
			t.Fatalf("append while %s's directory fsync is stuck: %v", name, err)
		}
		if _, _, err := l.ReadBatches(nil, segs[len(segs)-2].BaseOffset, 1<<20); err != nil {
			t.Fatalf("read while %s's directory fsync is stuck: %v", name, err)
		}
		close(fsys.release)
		if err := <-done; err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	// The drop changes the list first, then unlinks and fsyncs.
	stuck("DropSealed", "drop", func() error {
		_, err := l.DropSealed(segs[0].BaseOffset)
		return err
	})
	if h.count("drop") != 1 {
		t.Fatalf("drop holds %d, want 1", h.count("drop"))
	}
	// A rewrite publishes (renames, one directory fsync) and then swaps;
	// the swap's hold is reported after the fsync, and appends go on
	// while it is stuck.
	stuck("ThinSealed", "", func() error {
		_, err := l.ThinSealed(segs[1].BaseOffset, func(r *record.Record) bool { return r.Offset%2 == 0 }, ThinOptions{})
		return err
	})
	if h.count("swap") != 1 {
		t.Fatalf("swap holds %d, want 1 (ops %v)", h.count("swap"), h.ops)
	}
}
