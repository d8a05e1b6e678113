package server

import (
	"errors"
	"io"
	"io/fs"

	"github.com/hashicorp/raft"

	"github.com/tsstore/tsstore/fsm"
	"github.com/tsstore/tsstore/segment"
)

// verifiedSnapshots is the snapshot store Raft uses. Every snapshot it
// opens (to send to a follower through InstallSnapshot, for a backup, or
// to restore at start) is verified as it is read: each batch's CRC and
// offsets (fsm.VerifySnapshotStream). A snapshot that links a damaged
// segment file then fails with the segment's *segment.CorruptionError
// instead of shipping bad bytes: the follower's download fails at once
// (the leader closes the connection), the segment is queued for repair
// from a peer, and the repair points the snapshot's link at the good copy
// (fsm.SnapshotStore.Relink), so Raft's next attempt sends good bytes.
// A snapshot whose own copy is bad while the log's is good (a snapshot
// received from a leader keeps the stream in one file) is rebuilt from
// the log (repairSnapshots). A leader with a damaged segment or snapshot
// thus never makes a follower download bad bytes and refuse them in a
// loop.
type verifiedSnapshots struct {
	*fsm.SnapshotStore
	n *Node
}

var _ raft.SnapshotStore = verifiedSnapshots{}

// Open implements raft.SnapshotStore.
func (s verifiedSnapshots) Open(id string) (*raft.SnapshotMeta, io.ReadCloser, error) {
	meta, rc, err := s.SnapshotStore.Open(id)
	if err != nil {
		return nil, nil, err
	}
	return meta, verifiedSnapshot{r: fsm.VerifySnapshotStream(rc), c: rc, n: s.n, id: id}, nil
}

type verifiedSnapshot struct {
	r  io.Reader
	c  io.Closer
	n  *Node
	id string
}

func (v verifiedSnapshot) Read(p []byte) (int, error) {
	k, err := v.r.Read(p)
	if err != nil && err != io.EOF {
		v.n.logger.Error("snapshot holds damaged segment bytes; not sending them", "snapshot", v.id, "error", err)
		v.n.noteCorruption(err)
		v.n.scheduleSnapshotRepair(v.id)
	}
	return k, err
}

func (v verifiedSnapshot) Close() error { return v.c.Close() }

// scheduleSnapshotRepair queues a snapshot whose stream failed to verify.
func (n *Node) scheduleSnapshotRepair(id string) {
	q := &n.repairs
	q.mu.Lock()
	q.mu.snapshots[id] = true
	q.mu.Unlock()
	select {
	case q.kick <- struct{}{}:
	default:
	}
}

// repairSnapshots checks the queued snapshots again, once no segment
// repair is due: one that verifies now (its segment was repaired and the
// link pointed at the good file) or is gone leaves the queue; one that
// still fails is rebuilt from the log (fsm.SnapshotStore.RepairFromLog),
// which fails, to be tried later, while the log's copy is damaged too. It
// returns how many are left.
func (n *Node) repairSnapshots() int {
	q := &n.repairs
	q.mu.Lock()
	ids := make([]string, 0, len(q.mu.snapshots))
	for id := range q.mu.snapshots {
		ids = append(ids, id)
	}
	q.mu.Unlock()
	left := 0
	for _, id := range ids {
		err := n.checkSnapshot(id)
		if err != nil {
			var live []segment.SegmentInfo
			_ = n.proc.WithLog(func(l *segment.Log) error { live = l.Segments(); return nil })
			var newID string
			if newID, err = n.snaps.RepairFromLog(id, live); err == nil {
				n.logger.Info("damaged snapshot rebuilt from the log", "snapshot", id, "new_snapshot", newID)
			}
		}
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			n.logger.Warn("snapshot still damaged; trying again later", "snapshot", id, "error", err)
			left++
			continue
		}
		q.mu.Lock()
		delete(q.mu.snapshots, id)
		q.mu.Unlock()
	}
	return left
}

// checkSnapshot reads snapshot id through the verifier.
func (n *Node) checkSnapshot(id string) error {
	_, rc, err := n.snaps.Open(id)
	if err != nil {
		return err
	}
	defer rc.Close()
	_, err = io.Copy(io.Discard, fsm.VerifySnapshotStream(rc))
	return err
}
