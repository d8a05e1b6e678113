package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/tsstore/tsstore/client"
	"github.com/tsstore/tsstore/client/train"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

// `tsstore run`: one training run (client/run.go). start fences it to a
// new generation, show/state/checkpoints fold it (newest snapshot plus
// the tail), verify (run_verify.go) folds it from zero on every node.

func newRunCmd() *cobra.Command {
	cmd := groupCmd("run", "start, show, time-travel, list checkpoints of and verify a training run")
	cmd.Long = "run works on one training run; every subcommand takes RUN, --addr, --timeout and --json."
	cmd.AddCommand(newRunStartCmd(), newRunShowCmd(), newRunStateCmd(), newRunCheckpointsCmd(), newRunVerifyCmd())
	return cmd
}

// runError makes an unknown run a clear NotFound.
func runError(run string, err error) error {
	if errors.Is(err, client.ErrStreamNotFound) {
		return fmt.Errorf("NotFound: run %q does not exist: it was never started (`tsstore runs` lists the runs, `tsstore run start %s` starts it)", run, run)
	}
	return err
}

// onRun connects as cf says, looks run up (an unknown run is a clear
// NotFound, runError) and calls fn with the run's index entry; fn's
// errors about the run go through runError too.
func onRun(cf *clientFlags, run string, fn func(ctx context.Context, cl *client.Client, info *pb.RunInfo) error) error {
	cl, ctx, cancel, err := cf.connect()
	if err != nil {
		return err
	}
	defer cancel()
	defer cl.Close()
	info, err := cl.RunInfo(ctx, run)
	if err != nil {
		return runError(run, err)
	}
	return runError(run, fn(ctx, cl, info))
}

func printIndentJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(b))
	return err
}

func newRunStartCmd() *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{Use: "start RUN [--reason R]", Short: "start (or restart) a job attempt: fence the run to a new generation", Args: exactArgs("RUN")}
	fs := cmd.Flags()
	cf.register(fs)
	reason := fs.String("reason", "", `why, kept in the run's "$fence" event (e.g. "job 7 attempt 3: node 3 failed")`)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		stdout := cmd.OutOrStdout()
		run := args[0]
		cl, ctx, cancel, err := cf.connect()
		if err != nil {
			return err
		}
		defer cancel()
		defer cl.Close()
		gen, err := cl.StartRun(ctx, run, *reason)
		if err != nil {
			return err
		}
		// The fence's offset, unless another StartRun already fenced again.
		var fenceOffset uint64
		if info, err := cl.RunInfo(ctx, run); err == nil && info.Generation == gen {
			fenceOffset = info.FenceOffset
		}
		if cf.json {
			return printIndentJSON(stdout, struct {
				Run         string `json:"run"`
				Generation  uint64 `json:"generation"`
				FenceOffset uint64 `json:"fence_offset"`
			}{run, gen, fenceOffset})
		}
		fmt.Fprintf(stdout, "run %s: generation %d (fence at offset %d); appends of older generations are refused from now on\n", run, gen, fenceOffset)
		return nil
	}
	return cmd
}

// resumeJSON is where a restarted attempt continues: the step after the
// last complete checkpoint (null: none, start from scratch).
type resumeJSON struct {
	CheckpointStep *uint64 `json:"checkpoint_step"`
	NextStep       uint64  `json:"next_step"`
}

func newRunShowCmd() *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{Use: "show RUN", Short: "the run's index entry, its current state and where to resume", Args: exactArgs("RUN")}
	fs := cmd.Flags()
	cf.register(fs)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		stdout := cmd.OutOrStdout()
		run := args[0]
		return onRun(&cf, run, func(ctx context.Context, cl *client.Client, info *pb.RunInfo) error {
			r, err := cl.ResumeRun(ctx, run)
			if err != nil {
				return err
			}
			var ckpt *uint64
			if r.Checkpoint != nil {
				ckpt = &r.Checkpoint.Step
			}
			if cf.json {
				return printIndentJSON(stdout, struct {
					Run      runInfoJSON  `json:"run"`
					State    runStateJSON `json:"state"`
					Computed computedJSON `json:"computed"`
					Resume   resumeJSON   `json:"resume"`
				}{toRunInfoJSON(info), toRunStateJSON(r.State), toComputedJSON(r.Info), resumeJSON{ckpt, r.NextStep}})
			}
			fmt.Fprintf(stdout, "run %s: generation %d (fenced at offset %d, %s), %d events, last offset %d (%s)\n",
				info.Run, info.Generation, info.FenceOffset, fmtTime(info.FenceTimeUnixNano), info.Events, info.LastOffset, fmtTime(info.LastTimestampUnixNano))
			fmt.Fprintf(stdout, "snapshots: %d taken, %d indexed", info.SnapshotsTaken, len(info.Snapshots))
			if n := len(info.Snapshots); n > 0 {
				s := info.Snapshots[n-1]
				fmt.Fprintf(stdout, ", newest #%d at offset %d covers offset %d (step %d)", s.Seq, s.Offset, s.Covers, s.Step)
			}
			fmt.Fprintf(stdout, "\nstate now (%s):\n", describeComputed(r.Info))
			printRunState(stdout, r.State)
			if r.Checkpoint != nil {
				fmt.Fprintf(stdout, "resume at step %d, after the last complete checkpoint (step %d)\n", r.NextStep, r.Checkpoint.Step)
			} else {
				fmt.Fprintln(stdout, "resume from scratch: no complete checkpoint")
			}
			return nil
		})
	}
	return cmd
}

func newRunStateCmd() *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{Use: "state RUN (--at-step N | --at-offset O | --at-time T | --before-nan N)", Short: "the run's state at a point, with its hash", Args: exactArgs("RUN")}
	fs := cmd.Flags()
	cf.register(fs)
	atStep := fs.Uint64("at-step", 0, "the state at this step: the run's events up to the first one past it")
	atOffset := fs.Uint64("at-offset", 0, "the state after the run's events at or before this global offset")
	atTime := fs.String("at-time", "", "the state after the run's events at or before this time (RFC 3339, or a duration ago like 5m)")
	beforeNaN := fs.Uint64("before-nan", 0, "the state this many steps before the first NaN or Inf loss")
	cmd.MarkFlagsMutuallyExclusive("at-step", "at-offset", "at-time", "before-nan")
	cmd.MarkFlagsOneRequired("at-step", "at-offset", "at-time", "before-nan")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		stdout := cmd.OutOrStdout()
		run := args[0]
		var given []string
		for _, name := range []string{"at-step", "at-offset", "at-time", "before-nan"} {
			if fs.Changed(name) {
				given = append(given, "--"+name)
			}
		}
		if len(given) != 1 {
			return fmt.Errorf("%w: want exactly one of --at-step, --at-offset, --at-time and --before-nan, got %d (`tsstore run show` gives the state now)", errUsage, len(given))
		}
		var target train.Target
		switch given[0] {
		case "--at-step":
			target = train.AtStep(*atStep)
		case "--at-offset":
			target = train.AtOffset(*atOffset)
		case "--at-time":
			t, err := parseTimeFlag("--at-time", *atTime)
			if err != nil {
				return err
			}
			target = train.AtTime(t)
		}
		return onRun(&cf, run, func(ctx context.Context, cl *client.Client, _ *pb.RunInfo) error {
			note := ""
			if given[0] == "--before-nan" {
				now, _, err := cl.RunState(ctx, run, train.Target{})
				if err != nil {
					return err
				}
				t, ok := now.StepsBeforeFirstNaN(*beforeNaN)
				if !ok {
					return fmt.Errorf("run %q has no NaN or Inf loss in its %d events (up to offset %d)", run, now.Events, now.LastOffset)
				}
				target = t
				note = fmt.Sprintf("first NaN loss at step %d (rank %d, offset %d); %d steps before it is %v", now.FirstNaN.Step, now.FirstNaN.Rank, now.FirstNaN.Offset, *beforeNaN, t)
			}
			st, info, err := cl.RunState(ctx, run, target)
			if err != nil {
				return err
			}
			if cf.json {
				return printIndentJSON(stdout, struct {
					Run      string       `json:"run"`
					Target   string       `json:"target"`
					State    runStateJSON `json:"state"`
					Computed computedJSON `json:"computed"`
				}{run, target.String(), toRunStateJSON(st), toComputedJSON(info)})
			}
			if note != "" {
				fmt.Fprintln(stdout, note)
			}
			fmt.Fprintf(stdout, "run %s at %v (%s):\n", run, target, describeComputed(info))
			printRunState(stdout, st)
			return nil
		})
	}
	return cmd
}

func newRunCheckpointsCmd() *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{Use: "checkpoints RUN", Short: "the last complete checkpoint and the pending ones, with their files", Args: exactArgs("RUN")}
	fs := cmd.Flags()
	cf.register(fs)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		stdout := cmd.OutOrStdout()
		run := args[0]
		return onRun(&cf, run, func(ctx context.Context, cl *client.Client, _ *pb.RunInfo) error {
			r, err := cl.ResumeRun(ctx, run)
			if err != nil {
				return err
			}
			st := r.State
			if cf.json {
				j := toRunStateJSON(st)
				return printIndentJSON(stdout, struct {
					Run            string           `json:"run"`
					LastCheckpoint *checkpointJSON  `json:"last_checkpoint"`
					Pending        []checkpointJSON `json:"pending"`
					NextStep       uint64           `json:"next_step"`
					Computed       computedJSON     `json:"computed"`
				}{run, j.LastCheckpoint, j.Pending, r.NextStep, toComputedJSON(r.Info)})
			}
			fmt.Fprintf(stdout, "run %s at offset %d, step %d (%s)\n", run, st.LastOffset, st.Step, describeComputed(r.Info))
			if c := st.LastCheckpoint; c != nil {
				fmt.Fprintf(stdout, "last complete checkpoint: step %d (generation %d, completed at offset %d), majority sha256 %s, disagree %s\n",
					c.Step, c.Generation, c.Offset, c.Majority, fmtRanks(c.Disagree, "none"))
				printFiles(stdout, c)
				fmt.Fprintf(stdout, "resume at step %d\n", r.NextStep)
			} else {
				fmt.Fprintln(stdout, "no complete checkpoint: resume from scratch")
			}
			if len(st.Pending) == 0 {
				fmt.Fprintln(stdout, "pending: none")
			}
			for i := range st.Pending {
				c := &st.Pending[i]
				fmt.Fprintf(stdout, "pending: step %d (generation %d), %d saved, missing %s\n",
					c.Step, c.Generation, len(c.Files), fmtRanks(missingRanks(st, c), "none"))
				printFiles(stdout, c)
			}
			return nil
		})
	}
	return cmd
}
