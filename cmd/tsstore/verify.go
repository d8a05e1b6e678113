package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/tsstore/tsstore/fsm"
	"github.com/tsstore/tsstore/segment"
	"github.com/tsstore/tsstore/server"
)

// errCorrupt makes verify exit 1 after it printed its findings.
var errCorrupt = errors.New("corruption found")

// verifyResult is what `tsstore verify --json` prints.
type verifyResult struct {
	DataDir     string              `json:"data_dir"`
	OK          bool                `json:"ok"`
	Segments    int                 `json:"segments"`
	Bytes       int64               `json:"bytes"`
	FirstOffset uint64              `json:"first_offset"`
	NextOffset  uint64              `json:"next_offset"`
	Applied     uint64              `json:"applied_index"`
	Snapshots   []fsm.SnapshotCheck `json:"snapshots"`
	RaftLog     server.RaftLogCheck `json:"raft_log"`
	Corruption  *corruptionJSON     `json:"corruption,omitempty"`
	Error       string              `json:"error,omitempty"`
}

// corruptionJSON is a segment.CorruptionError in verify's JSON.
type corruptionJSON struct {
	Path     string `json:"path"`
	Position int64  `json:"position"`
	Offset   uint64 `json:"offset"`
	Reason   string `json:"reason"`
}

func newVerifyCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "verify --data-dir DIR | --cluster | --tiered", Short: "scrub a stopped node's data directory, compare every node's sealed segments online, or check the tiered objects (exit 1 on corruption)", Args: noArgs}
	dataDir := cmd.Flags().String("data-dir", "", "data directory of a stopped node")
	asJSON := cmd.Flags().Bool("json", false, "print JSON instead of text")
	var cf clientFlags
	cluster := registerVerifyCluster(cmd, &cf)
	tiered := registerVerifyTiered(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		switch {
		case (*cluster && *dataDir != "") || (*tiered && (*cluster || *dataDir != "")):
			return fmt.Errorf("%w: one of --data-dir, --cluster and --tiered", errUsage)
		case *cluster:
			return runVerifyCluster(cmd, &cf, *asJSON)
		case *tiered:
			return runVerifyTiered(cmd, &cf, *asJSON)
		case *dataDir == "":
			return fmt.Errorf("%w: required flag(s) \"data-dir\" not set (or --cluster, --tiered)", errUsage)
		}
		stdout, stderr := stdio(cmd)
		return runVerify(*dataDir, *asJSON, stdout, stderr)
	}
	return cmd
}

func runVerify(dataDir string, asJSON bool, stdout, stderr io.Writer) error {
	res := verifyResult{DataDir: dataDir}
	err := verifyDataDir(dataDir, &res, newProgressBar(stderr, "verify"))
	var ce *segment.CorruptionError
	switch {
	case errors.As(err, &ce):
		res.Corruption = &corruptionJSON{Path: ce.Path, Position: ce.Position, Offset: ce.Offset, Reason: ce.Reason}
		res.Error = err.Error()
	case err != nil:
		res.Error = err.Error()
	}
	errSnap := false
	for _, s := range res.Snapshots {
		if s.Err != "" && err == nil {
			errSnap = true
			err = fmt.Errorf("snapshot %s: %s", s.ID, s.Err)
			res.Error = err.Error()
		}
	}
	res.OK = err == nil
	if asJSON {
		json.NewEncoder(stdout).Encode(res)
	} else {
		printVerify(stdout, &res)
	}
	if res.Corruption != nil || errors.Is(err, segment.ErrCorrupt) || errors.Is(err, fsm.ErrBadSnapshot) || errors.Is(err, fsm.ErrDataLoss) || errors.Is(err, server.ErrRaftLogDamaged) || errSnap {
		return fmt.Errorf("%w in %s: %v", errCorrupt, dataDir, err)
	}
	return err
}

func printVerify(w io.Writer, r *verifyResult) {
	if r.Segments > 0 {
		fmt.Fprintf(w, "log: %d segments, %s, offsets [%d, %d), applied raft index %d\n",
			r.Segments, humanBytes(r.Bytes), r.FirstOffset, r.NextOffset, r.Applied)
	}
	if r.RaftLog.Entries > 0 {
		fmt.Fprintf(w, "raft log: %d files, %d entries [%d, %d], %s\n", r.RaftLog.Files, r.RaftLog.Entries, r.RaftLog.FirstIndex, r.RaftLog.LastIndex, humanBytes(r.RaftLog.Bytes))
		if r.RaftLog.TornTail {
			fmt.Fprintln(w, "raft log: the last write was torn by a crash; the node drops it at start")
		}
	}
	for _, s := range r.Snapshots {
		status := "ok"
		if s.Err != "" {
			status = "BAD: " + s.Err
		}
		fmt.Fprintf(w, "snapshot %s: raft index %d, term %d, %s, next offset %d: %s\n", s.ID, s.Index, s.Term, humanBytes(s.Size), s.NextOffset, status)
	}
	switch {
	case r.Corruption != nil:
		fmt.Fprintf(w, "CORRUPT: %s at position %d (offset %d): %s\n", r.Corruption.Path, r.Corruption.Position, r.Corruption.Offset, r.Corruption.Reason)
	case r.Error != "":
		fmt.Fprintf(w, "FAILED: %s\n", r.Error)
	default:
		fmt.Fprintf(w, "%s: ok\n", r.DataDir)
	}
}

// verifyDataDir scrubs a stopped node's data directory without changing
// it: the FSM's checkpoint and node file, every segment (segment.Verify:
// CRCs, records, offsets, timestamps, indexes), the snapshots and the Raft
// log (server.VerifyRaftLog).
func verifyDataDir(dir string, res *verifyResult, bar *progressBar) error {
	if _, err := os.Stat(filepath.Join(dir, "fsm", "log")); err != nil {
		return fmt.Errorf("%s does not look like a tsstore data directory: %w", dir, err)
	}
	if err := checkNotRunning(filepath.Join(dir, "raft", "raft.db")); err != nil {
		return err
	}
	var err error
	res.Snapshots, err = fsm.CheckSnapshots(filepath.Join(dir, "snapshots"))
	if err != nil {
		return err
	}
	if res.RaftLog, err = server.VerifyRaftLog(dir); err != nil {
		return err
	}
	cfg := fsm.DefaultConfig(filepath.Join(dir, "fsm"))
	cfg.Segment.FS = segment.ReadOnlyFS{}
	proc, err := fsm.Open(cfg)
	if err != nil {
		if errors.Is(err, segment.ErrReadOnly) {
			if ce := activeSegmentProblem(filepath.Join(dir, "fsm", "log")); ce != nil {
				return ce
			}
			return fmt.Errorf("the log needs the repair a node start makes before it can be verified read-only: %w", err)
		}
		return err
	}
	defer proc.Close()
	res.Applied, res.NextOffset = proc.AppliedIndex(), proc.NextOffset()
	if rl := res.RaftLog; rl.Entries > 0 && rl.LastIndex < res.Applied {
		// Entries reach the FSM only after they are in this node's log,
		// which only loses a prefix (compaction) or everything (a
		// snapshot install): an end below applied is a damaged log.
		return fmt.Errorf("%w: the raft log ends at index %d but the FSM applied up to %d: entries after %d are unreadable (a damaged raft/wal segment)",
			server.ErrRaftLogDamaged, rl.LastIndex, res.Applied, rl.LastIndex)
	}
	defer bar.finish()
	return proc.WithLog(func(l *segment.Log) error {
		res.FirstOffset = l.FirstOffset()
		for _, s := range l.Segments() {
			res.Segments++
			res.Bytes += s.Size
		}
		return l.Verify(bar.update)
	})
}

// checkNotRunning refuses a data directory whose raft.db a running node
// holds: bolt keeps an exclusive flock on it.
func checkNotRunning(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err != nil {
		return fmt.Errorf("%s is locked: a node is running on this data directory; stop it first (verify reads a stopped node's files)", path)
	}
	return syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
}

// activeSegmentProblem explains why a read-only open of the log failed
// when the active (last) segment does not end cleanly: Open would cut it
// at its first bad batch. A bad CRC there is corruption, reported by file
// and position like any other; a torn tail is what a crash leaves, and
// is reported as such.
func activeSegmentProblem(logDir string) error {
	logs, _ := filepath.Glob(filepath.Join(logDir, "*"+segment.LogSuffix))
	if len(logs) == 0 {
		return nil
	}
	sort.Strings(logs)
	path := logs[len(logs)-1]
	d, err := segment.DumpLog(path)
	if err != nil {
		return nil
	}
	for _, b := range d.Batches {
		if b.CRC != "ok" || b.WantBase != nil {
			return &segment.CorruptionError{Path: path, Position: b.Position, Offset: b.BaseOffset,
				Reason: fmt.Sprintf("batch [%d, %d] fails its check (%s) in the active segment; a node start would cut the segment here, dropping %d bytes",
					b.BaseOffset, b.LastOffset, b.CRC, d.Size-b.Position)}
		}
	}
	if t := d.Tail; t != nil && !t.Torn {
		return &segment.CorruptionError{Path: path, Position: t.Position, Offset: d.NextOffset,
			Reason: fmt.Sprintf("unreadable batch header in the active segment (%s); a node start would cut the segment here, dropping %d bytes", t.Error, t.Bytes)}
	}
	if t := d.Tail; t != nil {
		return fmt.Errorf("%s ends with an incomplete batch at position %d (%d bytes), as a crash leaves; a node start cuts it and Raft re-applies what was lost",
			path, t.Position, t.Bytes)
	}
	return nil
}
