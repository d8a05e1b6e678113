package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

func newLeaderCmd() *cobra.Command {
	leader := &cobra.Command{Use: "leader", Short: "hand leadership to another voter (leader transfer)", Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return fmt.Errorf("%w: want `leader transfer`", errUsage)
		}}
	var cf clientFlags
	cmd := &cobra.Command{Use: "transfer [--to ID]", Short: "hand leadership to another voter", Args: noArgs}
	cf.register(cmd.Flags())
	to := cmd.Flags().String("to", "", "voter to hand leadership to (default: the reachable voter that has applied the most)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error { return runLeaderTransfer(cmd, &cf, to) }
	leader.AddCommand(cmd)
	return leader
}

func runLeaderTransfer(cmd *cobra.Command, cf *clientFlags, to *string) error {
	stdout := cmd.OutOrStdout()
	cl, ctx, cancel, err := cf.connect()
	if err != nil {
		return err
	}
	defer cancel()
	defer cl.Close()
	var resp *pb.TransferLeadershipResponse
	err = cl.Cluster(ctx, func(ctx context.Context, c pb.ClusterClient) error {
		var err error
		resp, err = c.TransferLeadership(ctx, &pb.TransferLeadershipRequest{ToNodeId: *to})
		return err
	})
	if err != nil {
		return statusError(err)
	}
	if cf.json {
		return printJSON(stdout, resp)
	}
	fmt.Fprintf(stdout, "leader is now %s\n", resp.NewLeaderId)
	return nil
}
