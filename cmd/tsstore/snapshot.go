package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

func newSnapshotCmd() *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{Use: "snapshot [--node ID]", Short: "force a Raft snapshot on a node", Args: noArgs}
	cf.register(cmd.Flags())
	node := cmd.Flags().String("node", "", "node id to snapshot (default: the node at the first --addr)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error { return runSnapshot(cmd, &cf, *node) }
	return cmd
}

func runSnapshot(cmd *cobra.Command, cf *clientFlags, node string) error {
	stdout := cmd.OutOrStdout()
	ctx, cancel := cf.context()
	defer cancel()
	cl, cc, addr, err := cf.clusterNode(ctx, node)
	if err != nil {
		return err
	}
	defer cl.Close()
	resp, err := cc.Snapshot(ctx, &pb.SnapshotRequest{})
	if err != nil {
		return fmt.Errorf("snapshot on %s: %w", addr, err)
	}
	if cf.json {
		return json.NewEncoder(stdout).Encode(map[string]any{
			"node_address": addr, "id": resp.Id, "index": resp.Index, "term": resp.Term, "size_bytes": resp.SizeBytes,
		})
	}
	fmt.Fprintf(stdout, "snapshot %s on %s: raft index %d, term %d, %s\n", resp.Id, addr, resp.Index, resp.Term, humanBytes(int64(resp.SizeBytes)))
	return nil
}
