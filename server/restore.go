package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"

	"github.com/hashicorp/raft"

	"github.com/tsstore/tsstore/fsm"
	"github.com/tsstore/tsstore/internal/atomicfile"
	"github.com/tsstore/tsstore/segment"
)

// ErrRestoreRefused marks a restore that was refused before it wrote
// anything; the message says why.
var ErrRestoreRefused = errors.New("restore refused")

// keyCurrentTerm is hashicorp/raft's stable-store key for the current
// term (raft.go, unexported there; part of raft.db's format).
var keyCurrentTerm = []byte("CurrentTerm")

// RestoreConfig describes one node of a new cluster seeded from a backup.
type RestoreConfig struct {
	// DataDir is the node's data directory; it must not exist or be empty.
	DataDir string
	// NodeID is this node's id; it must be one of Peers.
	NodeID string
	// ClusterName is written to node.json.
	ClusterName string
	// Peers are all voters of the new cluster, this node among them. Every
	// node of the new cluster must be restored with the same list.
	Peers []Peer
	// RaftIndex and RaftTerm are the backup's cut (backup.Info).
	RaftIndex, RaftTerm uint64
	// NextOffset is the backup's next offset; the stream must agree.
	NextOffset uint64
	// Stream is the backup's snapshot stream.
	Stream io.Reader
	// SnapshotRetain is how many snapshots the node keeps (as in Config).
	SnapshotRetain int
	// Segment configures the segment log (as in Config).
	Segment segment.Options
	// Logger receives progress; nil discards.
	Logger *slog.Logger
}

// Validate checks the configuration; errors match ErrRestoreRefused.
func (c RestoreConfig) Validate() error {
	var errs []error
	errs = append(errs, validateIdentity(c.NodeID, c.ClusterName, c.DataDir)...)
	if len(c.Peers) == 0 {
		errs = append(errs, errors.New("peers are required: every voter of the new cluster as id=raft-host:port"))
	}
	ids, addrs := map[string]bool{}, map[string]string{}
	for _, p := range c.Peers {
		if !idPattern.MatchString(p.ID) {
			errs = append(errs, fmt.Errorf("peer id %q: want 1-64 of [A-Za-z0-9._-]", p.ID))
		} else if ids[p.ID] {
			errs = append(errs, fmt.Errorf("peer id %q is listed twice", p.ID))
		}
		ids[p.ID] = true
		if host, port, err := net.SplitHostPort(p.RaftAddr); err != nil || host == "" || port == "" || port == "0" {
			errs = append(errs, fmt.Errorf("peer %s raft address %q: want host:port", p.ID, p.RaftAddr))
		} else if other, ok := addrs[p.RaftAddr]; ok {
			errs = append(errs, fmt.Errorf("peers %s and %s share the raft address %s", other, p.ID, p.RaftAddr))
		}
		addrs[p.RaftAddr] = p.ID
	}
	if len(c.Peers) > 0 && !ids[c.NodeID] {
		errs = append(errs, fmt.Errorf("peers do not include this node %q", c.NodeID))
	}
	if c.RaftIndex == 0 || c.RaftTerm == 0 {
		errs = append(errs, fmt.Errorf("backup cut at raft index %d, term %d: both must be positive", c.RaftIndex, c.RaftTerm))
	}
	if c.Stream == nil {
		errs = append(errs, errors.New("no snapshot stream"))
	}
	if c.SnapshotRetain < 1 {
		errs = append(errs, errors.New("snapshot retain must be positive"))
	}
	if err := c.Segment.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrRestoreRefused, err)
	}
	return nil
}

// Restore seeds one node of a new cluster from a backup, offline. Run it
// once per node, with the same peers everywhere, then start every node
// with `tsstore serve` (bootstrap peers are ignored: the node has state).
//
// The FSM skips entries at or below its applied index, so the new
// cluster's Raft log must start above the backup's index. Restore makes
// the node look exactly like a member that has just taken a snapshot at
// the cut and compacted its log:
//
//   - the FSM is restored from the stream (every batch CRC checked), with
//     its applied index set to RaftIndex (fsm.ReseedSnapshot) and the old
//     cluster's node table dropped;
//   - the snapshot store holds one snapshot at (RaftIndex, RaftTerm) whose
//     configuration is the new peers, all voters; it hard-links the
//     restored segments. Raft (NoSnapshotRestoreOnStart) takes its last
//     index and term and the configuration from it, so the first entry
//     the new cluster appends is at RaftIndex+1;
//   - raft.db's CurrentTerm is RaftTerm, so the first election is for
//     term RaftTerm+1 and every new entry has a term above the snapshot's.
//     Without it, new entries would get terms 1, 2, ... below the
//     snapshot's term, and a node holding only the snapshot (last term
//     RaftTerm) would win elections against nodes holding newer committed
//     entries (last term lower), and overwrite them.
//
// Everything is written into a sibling temporary directory that is
// renamed to DataDir at the end, so a refused or failed restore leaves
// DataDir as it was.
func Restore(cfg RestoreConfig) (err error) {
	if err := cfg.Validate(); err != nil {
		return err
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err := checkRestoreTarget(cfg.DataDir); err != nil {
		return err
	}
	parent := filepath.Dir(filepath.Clean(cfg.DataDir))
	if err := os.MkdirAll(parent, 0o750); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(cfg.DataDir)+".restore-")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	if err := os.Chmod(tmp, 0o750); err != nil {
		return err
	}
	if err := restoreFSM(tmp, cfg, logger); err != nil {
		return err
	}
	if err := seedRaftTerm(tmp, cfg.RaftTerm); err != nil {
		return err
	}
	b, _ := json.Marshal(identity{Cluster: cfg.ClusterName, NodeID: cfg.NodeID})
	if err := atomicfile.Write(tmp, "node.json", b, 0o640); err != nil {
		return err
	}
	if err := atomicfile.SyncDir(tmp); err != nil {
		return err
	}
	// An existing (empty) DataDir is replaced, keeping its permissions.
	if fi, err := os.Stat(cfg.DataDir); err == nil {
		if err := os.Chmod(tmp, fi.Mode().Perm()); err != nil {
			return err
		}
		if err := os.Remove(cfg.DataDir); err != nil {
			return fmt.Errorf("replacing the empty %s: %w", cfg.DataDir, err)
		}
	}
	if err := os.Rename(tmp, cfg.DataDir); err != nil {
		return fmt.Errorf("publishing %s: %w", cfg.DataDir, err)
	}
	return atomicfile.SyncDir(parent)
}

// checkRestoreTarget refuses a data directory that holds anything.
func checkRestoreTarget(dir string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: data dir %s: %v", ErrRestoreRefused, dir, err)
	}
	if len(ents) == 0 {
		return nil
	}
	if b, err := os.ReadFile(filepath.Join(dir, "node.json")); err == nil {
		var id identity
		if json.Unmarshal(b, &id) == nil {
			return fmt.Errorf("%w: data dir %s already belongs to node %q of cluster %q; restore only into an empty or new directory",
				ErrRestoreRefused, dir, id.NodeID, id.Cluster)
		}
	}
	return fmt.Errorf("%w: data dir %s is not empty (it holds %q and %d more); restore only into an empty or new directory",
		ErrRestoreRefused, dir, ents[0].Name(), len(ents)-1)
}

// restoreFSM restores the FSM under dir/fsm from the reseeded stream and
// takes the snapshot that seeds Raft, linking the restored segments.
func restoreFSM(dir string, cfg RestoreConfig, logger *slog.Logger) error {
	fcfg := fsm.DefaultConfig(filepath.Join(dir, "fsm"))
	fcfg.Segment = cfg.Segment
	fcfg.Logger = logger
	proc, err := fsm.Open(fcfg)
	if err != nil {
		return err
	}
	defer proc.Close()
	pr, pw := io.Pipe()
	reseeded := make(chan error, 1)
	go func() {
		_, err := fsm.ReseedSnapshot(pw, cfg.Stream, cfg.RaftIndex)
		pw.CloseWithError(err)
		reseeded <- err
	}()
	err = proc.Restore(pr)
	pr.CloseWithError(errors.New("restore ended"))
	if rerr := <-reseeded; rerr != nil && err == nil {
		err = rerr
	}
	if err != nil {
		return fmt.Errorf("restoring the backup's snapshot: %w", err)
	}
	if proc.AppliedIndex() != cfg.RaftIndex || proc.NextOffset() != cfg.NextOffset {
		return fmt.Errorf("%w: restored FSM at index %d, next offset %d; the backup says index %d, next offset %d",
			fsm.ErrBadSnapshot, proc.AppliedIndex(), proc.NextOffset(), cfg.RaftIndex, cfg.NextOffset)
	}
	snaps, err := fsm.NewSnapshotStore(filepath.Join(dir, "snapshots"), cfg.SnapshotRetain, logger)
	if err != nil {
		return err
	}
	var conf raft.Configuration
	for _, p := range cfg.Peers {
		conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(p.ID), Address: raft.ServerAddress(p.RaftAddr)})
	}
	snap, err := (&fsm.FSM{P: proc}).Snapshot()
	if err != nil {
		return err
	}
	sink, err := snaps.Create(1, cfg.RaftIndex, cfg.RaftTerm, conf, cfg.RaftIndex, nil)
	if err != nil {
		return err
	}
	if err := snap.Persist(sink); err != nil {
		return fmt.Errorf("seeding the snapshot store: %w", err)
	}
	return proc.Close()
}

func seedRaftTerm(dir string, term uint64) error {
	if err := os.MkdirAll(filepath.Join(dir, "raft"), 0o750); err != nil {
		return err
	}
	store, err := openBolt(filepath.Join(dir, "raft", raftDBName))
	if err != nil {
		return err
	}
	err = store.SetUint64(keyCurrentTerm, term)
	if cerr := store.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return atomicfile.SyncDir(filepath.Join(dir, "raft"))
}
