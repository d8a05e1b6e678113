package fsm

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/tsstore/tsstore/internal/atomicfile"
	"github.com/tsstore/tsstore/segment"
)

// Repair support: sealed segments are byte-identical on every replica, so
// a damaged one is replaced with a peer's copy (segment.ReplaceSealed,
// driven by the server). What the FSM adds: snapshots refuse a log with a
// known damaged segment (Snapshot, ErrSegmentDamaged), a restored log is
// opened strictly (a snapshot with a bad segment is refused, never kept
// as damaged), and the snapshots that hard-link a replaced file are
// pointed at the new one (SnapshotStore.Relink).

// strictSegment is the segment configuration without OpenDamaged, for logs
// that must be whole: one just received in a snapshot.
func (p *Processor) strictSegment() segment.Options {
	o := p.cfg.Segment
	o.OpenDamaged = false
	return o
}

// Damaged lists the log's sealed segments known to be damaged.
func (p *Processor) Damaged() []segment.DamagedSegment {
	var out []segment.DamagedSegment
	_ = p.WithLog(func(l *segment.Log) error {
		out = l.Damaged()
		return nil
	})
	return out
}

// Relink points every link of every snapshot that is the file old (the
// same inode: snapshots hard-link segment files) at newPath instead, which
// holds the same bytes: a replaced segment's snapshots then ship the good
// copy. Each link is replaced atomically (link to a temporary name,
// rename over, fsync the directory). It returns how many links changed.
func (s *SnapshotStore) Relink(old os.FileInfo, newPath string) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range ents {
		if !e.IsDir() || strings.HasSuffix(e.Name(), ".tmp") {
			continue
		}
		m, err := s.readMeta(e.Name())
		if err != nil {
			continue // List skips it too
		}
		dir := filepath.Join(s.dir, e.Name())
		changed := false
		for _, l := range m.Links {
			path := filepath.Join(dir, l.Name)
			fi, err := os.Stat(path)
			if err != nil || !os.SameFile(fi, old) {
				continue
			}
			tmp := path + ".relink"
			os.Remove(tmp)
			if err := os.Link(newPath, tmp); err != nil {
				return n, fmt.Errorf("fsm: relink %s: %w", path, err)
			}
			if err := os.Rename(tmp, path); err != nil {
				os.Remove(tmp)
				return n, fmt.Errorf("fsm: relink %s: %w", path, err)
			}
			n++
			changed = true
		}
		if changed {
			if err := atomicfile.SyncDir(dir); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

// KnownNodes returns the node table (node id -> API address) as the data
// directory dir last recorded it, in its node file or its checkpoint,
// whichever is newer; empty if neither can be read. A node whose log
// cannot be opened uses it to find peers to repair from before it starts.
func KnownNodes(dir string) map[string]string {
	nodes, nerr := readNodes(dir)
	cp, cerr := readCheckpoint(dir)
	switch {
	case cerr == nil && cp.State != nil && (nerr != nil || cp.Index > nodes.Index):
		return cp.State.Nodes
	case nerr == nil:
		return nodes.Nodes
	}
	return map[string]string{}
}
