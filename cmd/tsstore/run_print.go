package main

import (
	"encoding/hex"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tsstore/tsstore/client"
	"github.com/tsstore/tsstore/client/train"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

// How `tsstore runs` and `tsstore run` print a run: text for people, and
// with --json the objects below (snake_case keys like the rest of the
// CLI; times RFC 3339 in UTC, "" when unset; hashes in hex; a loss that is
// NaN or ±Inf as the string "NaN", "+Inf" or "-Inf", which JSON numbers
// cannot carry).

// jsonFloat is a float64 that survives JSON when it is NaN or ±Inf.
type jsonFloat float64

func (f jsonFloat) MarshalJSON() ([]byte, error) {
	v := float64(f)
	switch {
	case math.IsNaN(v):
		return []byte(`"NaN"`), nil
	case math.IsInf(v, 1):
		return []byte(`"+Inf"`), nil
	case math.IsInf(v, -1):
		return []byte(`"-Inf"`), nil
	}
	return strconv.AppendFloat(nil, v, 'g', -1, 64), nil
}

func fmtTime(ns int64) string {
	if ns == 0 {
		return ""
	}
	return time.Unix(0, ns).UTC().Format(time.RFC3339Nano)
}

type runInfoJSON struct {
	Run            string            `json:"run"`
	Generation     uint64            `json:"generation"`
	FenceOffset    uint64            `json:"fence_offset"`
	FenceTime      string            `json:"fence_time"`
	Events         uint64            `json:"events"`
	LastOffset     uint64            `json:"last_offset"`
	LastTimestamp  string            `json:"last_timestamp"`
	SnapshotsTaken uint64            `json:"snapshots_taken"`
	Snapshots      []snapshotRefJSON `json:"snapshots"`
}

type snapshotRefJSON struct {
	Seq         uint64 `json:"seq"`
	Offset      uint64 `json:"offset"`
	Covers      uint64 `json:"covers"`
	Step        uint64 `json:"step"`
	Time        string `json:"time"`
	Events      uint64 `json:"events"`
	Batches     uint64 `json:"batches"`
	FoldVersion uint32 `json:"fold_version"`
}

func toRunInfoJSON(info *pb.RunInfo) runInfoJSON {
	j := runInfoJSON{Run: info.Run, Generation: info.Generation, FenceOffset: info.FenceOffset,
		FenceTime: fmtTime(info.FenceTimeUnixNano), Events: info.Events, LastOffset: info.LastOffset,
		LastTimestamp: fmtTime(info.LastTimestampUnixNano), SnapshotsTaken: info.SnapshotsTaken,
		Snapshots: []snapshotRefJSON{}}
	for _, r := range info.Snapshots {
		j.Snapshots = append(j.Snapshots, snapshotRefJSON{Seq: r.Seq, Offset: r.Offset, Covers: r.Covers, Step: r.Step,
			Time: fmtTime(r.TimeUnixNano), Events: r.Events, Batches: r.Batches, FoldVersion: r.FoldVersion})
	}
	return j
}

type runStateJSON struct {
	Run             string               `json:"run"`
	Generation      uint64               `json:"generation"`
	Events          uint64               `json:"events"`
	Skipped         uint64               `json:"skipped"`
	LastOffset      uint64               `json:"last_offset"`
	LastTimestamp   string               `json:"last_timestamp"`
	Status          string               `json:"status"`
	StatusReason    string               `json:"status_reason"`
	Model           string               `json:"model"`
	ConfigHash      string               `json:"config_hash"`
	WorldSize       int                  `json:"world_size"`
	Hyperparameters map[string]jsonFloat `json:"hyperparameters"`
	Epoch           uint64               `json:"epoch"`
	Batch           uint64               `json:"batch"`
	Step            uint64               `json:"step"`
	MaxStep         uint64               `json:"max_step"`
	LossStep        uint64               `json:"loss_step"`
	Loss            jsonFloat            `json:"loss"`
	LearningRate    jsonFloat            `json:"learning_rate"`
	Batches         uint64               `json:"batches"`
	Ranks           []rankJSON           `json:"ranks"`
	LastCheckpoint  *checkpointJSON      `json:"last_checkpoint"`
	Pending         []checkpointJSON     `json:"pending"`
	FirstNaN        *nanJSON             `json:"first_nan"`
	Hash            string               `json:"hash"`
}

type rankJSON struct {
	Rank     int    `json:"rank"`
	Host     string `json:"host"`
	Status   string `json:"status"`
	Reason   string `json:"reason"`
	LastStep uint64 `json:"last_step"`
}

type checkpointJSON struct {
	Step       uint64 `json:"step"`
	Generation uint64 `json:"generation"`
	Complete   bool   `json:"complete"`
	// Offset of the event that completed it; 0 while pending.
	Offset   uint64     `json:"offset"`
	Majority string     `json:"majority_sha256"`
	Disagree []int      `json:"disagree"`
	Files    []fileJSON `json:"files"`
	// Missing: live ranks that have not saved it yet (pending only).
	Missing []int `json:"missing"`
}

type fileJSON struct {
	Rank   int    `json:"rank"`
	URI    string `json:"uri"`
	Size   uint64 `json:"size"`
	SHA256 string `json:"sha256"`
}

type nanJSON struct {
	Step   uint64    `json:"step"`
	Offset uint64    `json:"offset"`
	Rank   int       `json:"rank"`
	Loss   jsonFloat `json:"loss"`
}

func toRunStateJSON(st *train.State) runStateJSON {
	j := runStateJSON{Run: st.Run, Generation: st.Generation, Events: st.Events, Skipped: st.Skipped,
		LastOffset: st.LastOffset, LastTimestamp: fmtTime(st.LastTimestamp), Status: st.Status.String(),
		StatusReason: st.StatusReason, Model: st.Model, ConfigHash: st.ConfigHash, WorldSize: st.WorldSize,
		Hyperparameters: map[string]jsonFloat{}, Epoch: st.Epoch, Batch: st.Batch, Step: st.Step, MaxStep: st.MaxStep,
		LossStep: st.LossStep, Loss: jsonFloat(st.Loss), LearningRate: jsonFloat(st.LearningRate), Batches: st.Batches,
		Ranks: []rankJSON{}, Pending: []checkpointJSON{}, Hash: hex.EncodeToString(st.Hash[:])}
	for k, v := range st.Hyperparameters {
		j.Hyperparameters[k] = jsonFloat(v)
	}
	for _, r := range st.Ranks {
		j.Ranks = append(j.Ranks, rankJSON{Rank: r.Rank, Host: r.Host, Status: r.Status.String(), Reason: r.Reason, LastStep: r.LastStep})
	}
	if st.LastCheckpoint != nil {
		c := toCheckpointJSON(st, st.LastCheckpoint, true)
		j.LastCheckpoint = &c
	}
	for i := range st.Pending {
		j.Pending = append(j.Pending, toCheckpointJSON(st, &st.Pending[i], false))
	}
	if n := st.FirstNaN; n != nil {
		j.FirstNaN = &nanJSON{Step: n.Step, Offset: n.Offset, Rank: n.Rank, Loss: jsonFloat(n.Loss)}
	}
	return j
}

func toCheckpointJSON(st *train.State, c *train.Checkpoint, complete bool) checkpointJSON {
	j := checkpointJSON{Step: c.Step, Generation: c.Generation, Complete: complete, Offset: c.Offset,
		Majority: c.Majority, Disagree: append([]int{}, c.Disagree...), Files: []fileJSON{}, Missing: []int{}}
	for _, f := range c.Files {
		j.Files = append(j.Files, fileJSON{Rank: f.Rank, URI: f.URI, Size: f.Size, SHA256: f.SHA256})
	}
	if !complete {
		j.Missing = missingRanks(st, c)
	}
	return j
}

// missingRanks lists the live ranks that have not saved c.
func missingRanks(st *train.State, c *train.Checkpoint) []int {
	out := []int{}
	for _, r := range st.Ranks {
		if r.Status != train.RankLive {
			continue
		}
		if !slices.ContainsFunc(c.Files, func(f train.CheckpointFile) bool { return f.Rank == r.Rank }) {
			out = append(out, r.Rank)
		}
	}
	return out
}

// computedJSON says how a state was computed (client.RunStateInfo).
type computedJSON struct {
	// Snapshot folded from; null: from the run's first event.
	Snapshot *snapshotJSON `json:"snapshot"`
	Folded   uint64        `json:"folded"`
	TookMS   float64       `json:"took_ms"`
}

type snapshotJSON struct {
	Seq    uint64 `json:"seq"`
	Offset uint64 `json:"offset"`
	Covers uint64 `json:"covers"`
	Time   string `json:"time"`
}

// toSnapshotJSON describes the snapshot a RunState started from. Not its
// State: RunState folds the tail into that very State, so after the call
// it is the state returned, not the snapshot's.
func toSnapshotJSON(s *client.RunSnapshot) *snapshotJSON {
	if s == nil {
		return nil
	}
	return &snapshotJSON{Seq: s.Seq, Offset: s.Offset, Covers: s.Covers, Time: s.Time.UTC().Format(time.RFC3339Nano)}
}

func toComputedJSON(info client.RunStateInfo) computedJSON {
	return computedJSON{Snapshot: toSnapshotJSON(info.Snapshot), Folded: info.Folded, TookMS: float64(info.Took.Microseconds()) / 1000}
}

// describeComputed is the text form of info: "from snapshot #3 at offset
// 2400 (covers 2399), folded 120 events, took 4ms".
func describeComputed(info client.RunStateInfo) string {
	from := "from the run's first event (no snapshot at or before the target)"
	if s := info.Snapshot; s != nil {
		from = fmt.Sprintf("from snapshot #%d (covers offset %d)", s.Seq, s.Covers)
	}
	return fmt.Sprintf("%s, folded %d events, took %v", from, info.Folded, info.Took.Round(10*time.Microsecond))
}

// fmtLoss prints a loss or rate compactly; NaN and ±Inf as Go does.
func fmtLoss(f float64) string { return strconv.FormatFloat(f, 'g', 6, 64) }

// printRunState prints st for people: progress, ranks, the last complete
// checkpoint with its files, the pending ones, the first NaN and the hash.
func printRunState(w io.Writer, st *train.State) {
	status := st.Status.String()
	if st.StatusReason != "" {
		status += " (" + st.StatusReason + ")"
	}
	fmt.Fprintf(w, "  status      %s, generation %d\n", status, st.Generation)
	if st.Model != "" || st.WorldSize != 0 {
		fmt.Fprintf(w, "  model       %s, world size %d, config %s%s\n", st.Model, st.WorldSize, st.ConfigHash, fmtParams(st.Hyperparameters))
	}
	fmt.Fprintf(w, "  progress    epoch %d, batch %d, step %d (run's highest %d), %d batches, %d events (last offset %d at %s)\n",
		st.Epoch, st.Batch, st.Step, st.MaxStep, st.Batches, st.Events, st.LastOffset, fmtTime(st.LastTimestamp))
	if st.Skipped > 0 {
		fmt.Fprintf(w, "  skipped     %d events the fold could not read\n", st.Skipped)
	}
	if st.Batches > 0 {
		fmt.Fprintf(w, "  loss        %s at step %d, learning rate %s\n", fmtLoss(st.Loss), st.LossStep, fmtLoss(st.LearningRate))
	}
	if n := st.FirstNaN; n != nil {
		fmt.Fprintf(w, "  first NaN   loss %v at step %d (rank %d, offset %d)\n", n.Loss, n.Step, n.Rank, n.Offset)
	} else {
		fmt.Fprintln(w, "  first NaN   none")
	}
	if len(st.Ranks) > 0 {
		fmt.Fprintf(w, "  ranks       %s\n", summarizeRanks(st.Ranks))
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "    RANK\tHOST\tSTATUS\tLAST STEP\tREASON")
		for _, r := range st.Ranks {
			fmt.Fprintf(tw, "    %d\t%s\t%s\t%d\t%s\n", r.Rank, r.Host, r.Status, r.LastStep, r.Reason)
		}
		tw.Flush()
	}
	if c := st.LastCheckpoint; c != nil {
		fmt.Fprintf(w, "  checkpoint  step %d complete (generation %d, at offset %d), majority sha256 %s, disagree %s\n",
			c.Step, c.Generation, c.Offset, c.Majority, fmtRanks(c.Disagree, "none"))
		printFiles(w, c)
	} else {
		fmt.Fprintln(w, "  checkpoint  none complete")
	}
	for i := range st.Pending {
		c := &st.Pending[i]
		fmt.Fprintf(w, "  pending     step %d (generation %d): %d saved, missing %s\n",
			c.Step, c.Generation, len(c.Files), fmtRanks(missingRanks(st, c), "none"))
	}
	fmt.Fprintf(w, "  hash        %x\n", st.Hash)
}

func printFiles(w io.Writer, c *train.Checkpoint) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "    RANK\tURI\tSIZE\tSHA256\t")
	for _, f := range c.Files {
		mark := ""
		if c.Majority != "" && f.SHA256 != c.Majority {
			mark = "DISAGREES"
		}
		fmt.Fprintf(tw, "    %d\t%s\t%d\t%s\t%s\n", f.Rank, f.URI, f.Size, f.SHA256, mark)
	}
	tw.Flush()
}

func fmtParams(p train.Params) string {
	if len(p) == 0 {
		return ""
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(p)) {
		parts = append(parts, k+"="+fmtLoss(p[k]))
	}
	return ", " + strings.Join(parts, " ")
}

// summarizeRanks: "8 ranks: 7 live, 1 failed".
func summarizeRanks(ranks []train.RankState) string {
	n := map[train.RankStatus]int{}
	for _, r := range ranks {
		n[r.Status]++
	}
	s := fmt.Sprintf("%d ranks: %d live", len(ranks), n[train.RankLive])
	if n[train.RankFailed] > 0 {
		s += fmt.Sprintf(", %d failed", n[train.RankFailed])
	}
	if n[train.RankLeft] > 0 {
		s += fmt.Sprintf(", %d left", n[train.RankLeft])
	}
	return s
}

func fmtRanks(ranks []int, none string) string {
	if len(ranks) == 0 {
		return none
	}
	parts := make([]string, len(ranks))
	for i, r := range ranks {
		parts[i] = strconv.Itoa(r)
	}
	return "ranks " + strings.Join(parts, ",")
}
