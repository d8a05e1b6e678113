package server

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/tsstore/tsstore/fsm"
	"github.com/tsstore/tsstore/internal/atomicfile"
)

// ErrNodeRemoved is returned by New, and sent on Fatal, when this data
// directory belongs to a node that was removed from its cluster. Such a
// directory can never rejoin: wipe it to add the node again.
var ErrNodeRemoved = errors.New("node was removed from the cluster")

const (
	identityFile = "node.json"
	// removedFile marks a data directory whose node was removed. Its
	// presence alone refuses the start; the content is for the operator.
	removedFile = "removed"
)

// identity is node.json: who owns this data directory. Incarnation is a
// random id created with the directory; a node.json from before
// incarnations existed gets one on its next start.
type identity struct {
	Cluster     string `json:"cluster"`
	NodeID      string `json:"node_id"`
	Incarnation string `json:"incarnation,omitempty"`
}

// removedMarker is the content of the removed file.
type removedMarker struct {
	NodeID      string    `json:"node_id"`
	Incarnation string    `json:"incarnation"`
	RaftIndex   uint64    `json:"raft_index"`
	RemovedAt   time.Time `json:"removed_at"`
	Message     string    `json:"message"`
}

func newIncarnation() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// checkIdentity refuses a data directory of another cluster or node, or of
// a removed node, and loads (or creates) the incarnation.
func (n *Node) checkIdentity() error {
	if err := os.MkdirAll(n.cfg.DataDir, 0o750); err != nil {
		return err
	}
	if err := n.checkRemovedMarker(); err != nil {
		return err
	}
	path := filepath.Join(n.cfg.DataDir, identityFile)
	want := identity{Cluster: n.cfg.ClusterName, NodeID: n.cfg.NodeID}
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	got := want
	if err == nil {
		got = identity{}
		if err := json.Unmarshal(b, &got); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if got.Cluster != want.Cluster || got.NodeID != want.NodeID {
			return fmt.Errorf("%w: %s says cluster %q node %q, configured cluster %q node %q",
				ErrWrongCluster, path, got.Cluster, got.NodeID, want.Cluster, want.NodeID)
		}
	}
	if got.Incarnation == "" {
		got.Incarnation = newIncarnation()
		b, _ := json.Marshal(got)
		if err := atomicfile.Write(n.cfg.DataDir, identityFile, b, 0o640); err != nil {
			return err
		}
	}
	n.incarnation = got.Incarnation
	return nil
}

func (n *Node) checkRemovedMarker() error {
	path := filepath.Join(n.cfg.DataDir, removedFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var m removedMarker
	if json.Unmarshal(b, &m) != nil || m.Message == "" {
		return fmt.Errorf("%w: %s exists; wipe the data directory %s to add this node again", ErrNodeRemoved, path, n.cfg.DataDir)
	}
	return fmt.Errorf("%w: %s (marker %s)", ErrNodeRemoved, m.Message, path)
}

// checkNotRemoved refuses to start when the node table already holds this
// incarnation's tombstone (the node stopped before writing its marker).
func (n *Node) checkNotRemoved() error {
	t, ok := n.proc.Removed(n.cfg.NodeID, n.incarnation)
	if !ok {
		return nil
	}
	err := n.writeRemovedMarker(t)
	if err == nil {
		err = n.checkRemovedMarker()
	}
	return err
}

func (n *Node) removedMessage(t fsm.Tombstone) string {
	return fmt.Sprintf("node %s (incarnation %s) was removed from the cluster at raft index %d; "+
		"this data directory can never rejoin. To add the node again, stop it, wipe %s, start it and run "+
		"`tsstore members add %s %s`", t.NodeID, t.Incarnation, t.RaftIndex, n.cfg.DataDir, n.cfg.NodeID, n.cfg.RaftAddr)
}

func (n *Node) writeRemovedMarker(t fsm.Tombstone) error {
	b, _ := json.MarshalIndent(removedMarker{
		NodeID: t.NodeID, Incarnation: t.Incarnation, RaftIndex: t.RaftIndex,
		RemovedAt: time.Now().UTC(), Message: n.removedMessage(t),
	}, "", "  ")
	return atomicfile.Write(n.cfg.DataDir, removedFile, append(b, '\n'), 0o640)
}

// removed marks the data directory and stops the node for good.
func (n *Node) removed(t fsm.Tombstone, how string) {
	if err := n.writeRemovedMarker(t); err != nil {
		n.logger.Error("writing the removed marker", "error", err)
	}
	n.setFatal(fmt.Errorf("%w (%s): %s", ErrNodeRemoved, how, n.removedMessage(t)))
}

// watchRemoval stops the node once the node table holds its own tombstone,
// whether it arrived as an entry or in a snapshot.
func (n *Node) watchRemoval() {
	for {
		ch := n.proc.Changed()
		if t, ok := n.proc.Removed(n.cfg.NodeID, n.incarnation); ok {
			n.removed(t, "it applied its own removal")
			return
		}
		select {
		case <-ch:
		case <-n.shutdown:
			return
		}
	}
}

// Incarnation is the random id of this node's data directory.
func (n *Node) Incarnation() string { return n.incarnation }
