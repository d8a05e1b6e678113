package main

import (
	"encoding/json"
	"fmt"
	"io"

	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

func runSnapshot(args []string, stdout, stderr io.Writer) error {
	var cf clientFlags
	fs := newFlagSet("snapshot", stderr, "snapshot [--addr host:port] [--node ID] [--json]")
	cf.register(fs)
	node := fs.String("node", "", "node id to snapshot (default: the node at the first --addr)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
	}
	ctx, cancel := commandContext(cf.timeout, true)
	defer cancel()
	cl, cc, addr, err := cf.clusterNode(ctx, *node)
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
