package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

func newStatusCmd() *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{Use: "status", Short: "show a node's view of the cluster", Args: noArgs}
	cf.register(cmd.Flags())
	cmd.RunE = func(cmd *cobra.Command, args []string) error { return runStatus(cmd, &cf) }
	return cmd
}

func runStatus(cmd *cobra.Command, cf *clientFlags) error {
	stdout := cmd.OutOrStdout()
	cl, ctx, cancel, err := cf.connect()
	if err != nil {
		return err
	}
	defer cancel()
	defer cl.Close()
	st, err := cl.Status(ctx)
	if err != nil {
		return err
	}
	if cf.json {
		return printJSON(stdout, st)
	}
	fmt.Fprintf(stdout, "node %s: %s, term %d, leader %s (%s)\n", st.NodeId, st.Role, st.Term, st.LeaderId, st.LeaderApiAddress)
	// "applied" is raft's applied index, as `tsstore members` shows it; the
	// FSM's may trail it by entries that never reach the FSM (a new
	// leader's no-op and barrier).
	fmt.Fprintf(stdout, "commit index %d, applied index %d (fsm %d), last snapshot %d\n",
		st.CommitIndex, st.RaftAppliedIndex, st.AppliedIndex, st.LastSnapshotIndex)
	last := "-"
	if st.LastTimestampUnixNano > 0 {
		last = time.Unix(0, st.LastTimestampUnixNano).UTC().Format(time.RFC3339Nano)
	}
	fmt.Fprintf(stdout, "offsets [%d, %d), last event %s\n", st.FirstOffset, st.NextOffset, last)
	if st.TierBacklogSegments > 0 || st.TierEvictedSegments > 0 {
		fmt.Fprintf(stdout, "tier: backlog %d segments (%s) not tiered yet, %d segments read from the tier target (tsstore tier status)\n",
			st.TierBacklogSegments, humanBytes(int64(st.TierBacklogBytes)), st.TierEvictedSegments)
	}
	fmt.Fprintln(stdout)
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tRAFT\tAPI\tSUFFRAGE\tLEADER")
	for _, n := range st.Nodes {
		lead := ""
		if n.Leader {
			lead = "*"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", n.Id, n.RaftAddress, n.ApiAddress, n.Suffrage, lead)
	}
	return tw.Flush()
}
