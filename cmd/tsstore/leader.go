package main

import (
	"context"
	"fmt"
	"io"

	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

func runLeader(args []string, stdout, stderr io.Writer) error {
	var cf clientFlags
	fs := newFlagSet("leader", stderr, "leader transfer [--to ID] [--addr host:port] [--json]")
	cf.register(fs)
	to := fs.String("to", "", "voter to hand leadership to (default: the reachable voter that has applied the most)")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || pos[0] != "transfer" {
		fs.Usage()
		return fmt.Errorf("%w: want `leader transfer`", errUsage)
	}
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
