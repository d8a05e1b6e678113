package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	pb "github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/segment"
)

// repairResult is what `tsstore repair --json` prints.
type repairResult struct {
	NodeAddress string          `json:"node_address"`
	NodeID      string          `json:"node_id"`
	Checked     uint32          `json:"checked"`
	Segments    []segmentRepair `json:"segments"`
	OK          bool            `json:"ok"`
}

type segmentRepair struct {
	BaseOffset uint64 `json:"base_offset"`
	File       string `json:"file"`
	Result     string `json:"result"`
	From       string `json:"from_node_id,omitempty"`
	SizeBytes  uint64 `json:"size_bytes,omitempty"`
	Damage     string `json:"damage,omitempty"`
	Error      string `json:"error,omitempty"`
}

// runRepair asks one node to check its sealed segments (all, or the one
// given) and repair the damaged ones from a peer's copy now.
func newRepairCmd() *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{
		Use:   "repair [--node ID] [--segment BASE] [--from PEER]",
		Short: "check a node's sealed segments and repair damaged ones from a peer (exit 1 if one stays damaged)",
		Args:  noArgs,
	}
	fs := cmd.Flags()
	cf.registerTimeout(fs, 0) // a full check reads the whole log
	node := fs.String("node", "", "node id to repair (default: the node at the first --addr)")
	seg := fs.String("segment", "", "base offset of the one sealed segment to check and repair (default: verify every sealed segment, a full read of the log)")
	from := fs.String("from", "", "node id to fetch good copies from (default: the other members in turn)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error { return runRepair(cmd, &cf, *node, *seg, *from) }
	return cmd
}

func runRepair(cmd *cobra.Command, cf *clientFlags, node, seg, from string) error {
	stdout := cmd.OutOrStdout()
	req := &pb.RepairSegmentsRequest{FromNodeId: from}
	if seg != "" {
		base, err := strconv.ParseUint(strings.TrimSuffix(seg, segment.LogSuffix), 10, 64)
		if err != nil {
			return fmt.Errorf("%w: --segment %q is not a base offset", errUsage, seg)
		}
		req.BaseOffsets = []uint64{base}
	}
	ctx, cancel := cf.context()
	defer cancel()
	cl, _, addr, err := cf.clusterNode(ctx, node)
	if err != nil {
		return err
	}
	defer cl.Close()
	conn, err := cl.NodeConn(addr)
	if err != nil {
		return err
	}
	resp, err := pb.NewRepairClient(conn).RepairSegments(ctx, req)
	if err != nil {
		return fmt.Errorf("repair on %s: %w", addr, err)
	}
	res := repairResult{NodeAddress: addr, NodeID: resp.NodeId, Checked: resp.Checked, Segments: []segmentRepair{}, OK: true}
	for _, s := range resp.Segments {
		res.Segments = append(res.Segments, segmentRepair{BaseOffset: s.BaseOffset, File: segment.FileName(s.BaseOffset),
			Result: s.Result, From: s.FromNodeId, SizeBytes: s.SizeBytes, Damage: s.Damage, Error: s.Error})
		res.OK = res.OK && s.Result != "failed"
	}
	if cf.json {
		json.NewEncoder(stdout).Encode(res)
	} else {
		printRepair(stdout, &res)
	}
	if !res.OK {
		return fmt.Errorf("some damaged segments could not be repaired on %s (see docs/operations.md, Repairing damaged segments)", addr)
	}
	return nil
}

func printRepair(w io.Writer, r *repairResult) {
	fmt.Fprintf(w, "node %s (%s): checked %d sealed segments\n", r.NodeID, r.NodeAddress, r.Checked)
	damaged := 0
	for _, s := range r.Segments {
		switch s.Result {
		case "healthy":
			fmt.Fprintf(w, "%s: healthy\n", s.File)
			continue
		case "repaired":
			fmt.Fprintf(w, "%s: REPAIRED from %s (%s)\n", s.File, s.From, humanBytes(int64(s.SizeBytes)))
		default:
			fmt.Fprintf(w, "%s: FAILED: %s\n", s.File, s.Error)
		}
		damaged++
		if s.Damage != "" {
			fmt.Fprintf(w, "  damage was: %s\n", s.Damage)
		}
	}
	if damaged == 0 {
		fmt.Fprintln(w, "no damaged segment")
	}
}
