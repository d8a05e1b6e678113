package server

import (
	"io"

	"github.com/hashicorp/raft"

	"github.com/tsstore/tsstore/fsm"
)

// verifiedSnapshots is the snapshot store Raft uses. Every snapshot it
// opens (to send to a follower through InstallSnapshot, for a backup, or
// to restore at start) is verified as it is read: each batch's CRC and
// offsets (fsm.VerifySnapshotStream). A snapshot that links a damaged
// segment file then fails with the segment's *segment.CorruptionError
// instead of shipping bad bytes: the follower's download fails at once
// (the leader closes the connection), the segment is queued for repair
// from a peer, and the repair points the snapshot's link at the good copy
// (fsm.SnapshotStore.Relink), so Raft's next attempt sends good bytes. A
// leader with a damaged segment thus never makes a follower download bad
// bytes and refuse them in a loop.
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
	}
	return k, err
}

func (v verifiedSnapshot) Close() error { return v.c.Close() }
