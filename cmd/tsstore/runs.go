package main

import (
	"encoding/json"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tsstore/tsstore/client/train"
)

// `tsstore runs`: the training runs, each with its index entry and a
// summary of its newest snapshot. One index lookup per run and no fold,
// so it stays cheap however long the runs are; `tsstore run show RUN`
// folds the tail after the snapshot.

// runSummaryJSON is one line of `tsstore runs --json`.
type runSummaryJSON struct {
	Run            string `json:"run"`
	Generation     uint64 `json:"generation"`
	Events         uint64 `json:"events"`
	LastOffset     uint64 `json:"last_offset"`
	LastTimestamp  string `json:"last_timestamp"`
	SnapshotsTaken uint64 `json:"snapshots_taken"`
	// Snapshot: from the run's newest snapshot; null if it has none.
	Snapshot      *runSnapshotSummaryJSON `json:"snapshot"`
	SnapshotError string                  `json:"snapshot_error,omitempty"`
}

type runSnapshotSummaryJSON struct {
	Seq    uint64    `json:"seq"`
	Covers uint64    `json:"covers"`
	Time   string    `json:"time"`
	Status string    `json:"status"`
	Step   uint64    `json:"step"`
	Epoch  uint64    `json:"epoch"`
	Loss   jsonFloat `json:"loss"`
	// LastCheckpointStep: of the last complete checkpoint; null if none.
	LastCheckpointStep *uint64 `json:"last_checkpoint_step"`
}

func newRunsCmd() *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{Use: "runs [--prefix P]", Short: "list training runs with a summary of their state", Args: noArgs}
	cf.register(cmd.Flags())
	prefix := cmd.Flags().String("prefix", "", "only runs whose name starts with this")
	cmd.RunE = func(cmd *cobra.Command, args []string) error { return runRuns(cmd, &cf, prefix) }
	return cmd
}

func runRuns(cmd *cobra.Command, cf *clientFlags, prefix *string) error {
	stdout, stderr := stdio(cmd)
	cl, ctx, cancel, err := cf.connect()
	if err != nil {
		return err
	}
	defer cancel()
	defer cl.Close()
	runs, err := cl.Runs(ctx, *prefix)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(stdout)
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	if !cf.json {
		fmt.Fprintln(tw, "RUN\tGEN\tEVENTS\tLAST OFFSET\tLAST EVENT\tSNAPSHOTS\t| STATUS\tSTEP\tEPOCH\tLOSS\tCHECKPOINT")
	}
	for _, r := range runs {
		j := runSummaryJSON{Run: r.Run, Generation: r.Generation, Events: r.Events, LastOffset: r.LastOffset,
			LastTimestamp: fmtTime(r.LastTimestampUnixNano), SnapshotsTaken: r.SnapshotsTaken}
		snap, ok, err := cl.RunSnapshotAt(ctx, r.Run, train.Target{})
		switch {
		case err != nil:
			j.SnapshotError = err.Error()
		case ok:
			st := snap.State
			s := &runSnapshotSummaryJSON{Seq: snap.Seq, Covers: snap.Covers, Time: snap.Time.UTC().Format(time.RFC3339Nano),
				Status: st.Status.String(), Step: st.Step, Epoch: st.Epoch, Loss: jsonFloat(st.Loss)}
			if st.LastCheckpoint != nil {
				s.LastCheckpointStep = &st.LastCheckpoint.Step
			}
			j.Snapshot = s
		}
		if cf.json {
			if err := enc.Encode(j); err != nil {
				return err
			}
			continue
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\t%d\t| ", j.Run, j.Generation, j.Events, j.LastOffset, j.LastTimestamp, j.SnapshotsTaken)
		switch s := j.Snapshot; {
		case j.SnapshotError != "":
			fmt.Fprintf(tw, "ERROR %s\t\t\t\t\n", j.SnapshotError)
		case s == nil:
			fmt.Fprintf(tw, "-\t-\t-\t-\t-\n")
		default:
			ckpt := "-"
			if s.LastCheckpointStep != nil {
				ckpt = fmt.Sprint(*s.LastCheckpointStep)
			}
			fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\n", s.Status, s.Step, s.Epoch, fmtLoss(float64(s.Loss)), ckpt)
		}
	}
	if cf.json {
		return nil
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(runs) == 0 {
		fmt.Fprintln(stderr, "no runs")
	} else {
		fmt.Fprintln(stderr, "STATUS..CHECKPOINT are as of each run's newest snapshot; `tsstore run show RUN` folds the events after it")
	}
	return nil
}
