package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"

	"github.com/spf13/cobra"

	pb "github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/segment"
)

// errDigestMismatch makes verify --cluster exit 1 after it printed.
var errDigestMismatch = errors.New("replicas differ")

// clusterVerifyResult is what `tsstore verify --cluster --json` prints.
type clusterVerifyResult struct {
	OK       bool                   `json:"ok"`
	Nodes    []clusterVerifyNode    `json:"nodes"`
	Segments []clusterVerifySegment `json:"segments"`
}

type clusterVerifyNode struct {
	NodeID      string `json:"node_id"`
	Address     string `json:"address"`
	FirstOffset uint64 `json:"first_offset"`
	Segments    int    `json:"segments"`
	Error       string `json:"error,omitempty"`
}

// clusterVerifySegment is one sealed segment as every node that holds it
// sees it; Digests maps node id to the digest read now.
type clusterVerifySegment struct {
	BaseOffset uint64            `json:"base_offset"`
	NextOffset uint64            `json:"next_offset"`
	Digests    map[string]string `json:"digests"`
	OK         bool              `json:"ok"`
	Problem    string            `json:"problem,omitempty"`
}

// registerVerifyCluster adds verify's --cluster flags: the client's,
// except --json, which verify has already.
func registerVerifyCluster(cmd *cobra.Command, cf *clientFlags) *bool {
	fs := cmd.Flags()
	cluster := fs.Bool("cluster", false, "compare every node's sealed segments online, by the CRC-32C each reads from its disk now (no --data-dir)")
	fs.StringVar(&cf.addrs, "addr", "", "with --cluster or --tiered: comma-separated API addresses of any cluster nodes (default: env TSSTORE_ADDR, else "+devAddrs+")")
	fs.DurationVar(&cf.timeout, "timeout", 0, "with --cluster or --tiered: overall time limit (0: none; every node reads its whole log, the leader every tiered object)")
	cf.sec.register(fs)
	return cluster
}

// runVerifyCluster asks every member for the digests of its sealed
// segments and compares them, like etcd's HashKV: sealed segments are
// byte-identical on every replica, so any difference is damage (or a
// bug). A segment is checked on the nodes that hold it (one may have
// dropped it already, another not yet); a node's digest must also equal
// the one its manifest recorded when the segment was sealed.
func runVerifyCluster(cmd *cobra.Command, cf *clientFlags, asJSON bool) error {
	stdout := cmd.OutOrStdout()
	cl, ctx, cancel, err := cf.connect()
	if err != nil {
		return err
	}
	defer cancel()
	defer cl.Close()
	st, err := cl.Status(ctx)
	if err != nil {
		return statusError(err)
	}
	res := clusterVerifyResult{OK: true, Nodes: []clusterVerifyNode{}, Segments: []clusterVerifySegment{}}
	bySeg := map[uint64]*clusterVerifySegment{}
	for _, n := range st.Nodes {
		node := clusterVerifyNode{NodeID: n.Id, Address: n.ApiAddress}
		var resp *pb.SegmentDigestsResponse
		c, err := retentionClient(cl, n.ApiAddress)
		if err == nil {
			resp, err = c.SegmentDigests(ctx, &pb.SegmentDigestsRequest{})
		}
		if err != nil {
			node.Error = statusError(err).Error()
			res.OK = false
			res.Nodes = append(res.Nodes, node)
			continue
		}
		node.FirstOffset, node.Segments = resp.FirstOffset, len(resp.Segments)
		res.Nodes = append(res.Nodes, node)
		for _, s := range resp.Segments {
			v := bySeg[s.BaseOffset]
			if v == nil {
				v = &clusterVerifySegment{BaseOffset: s.BaseOffset, NextOffset: s.NextOffset, Digests: map[string]string{}, OK: true}
				bySeg[s.BaseOffset] = v
			}
			switch {
			case s.Error != "":
				v.Digests[n.Id] = "error"
				v.OK, v.Problem = false, fmt.Sprintf("%s cannot read it: %s", n.Id, s.Error)
			case s.Digest != s.ManifestDigest:
				v.Digests[n.Id] = fmt.Sprintf("%08x", s.Digest)
				v.OK, v.Problem = false, fmt.Sprintf("%s: %08x now, %08x when sealed", n.Id, s.Digest, s.ManifestDigest)
			default:
				v.Digests[n.Id] = fmt.Sprintf("%08x", s.Digest)
			}
			if s.NextOffset != v.NextOffset {
				v.OK, v.Problem = false, fmt.Sprintf("%s: ends at %d, others at %d", n.Id, s.NextOffset, v.NextOffset)
			}
		}
	}
	for _, v := range bySeg {
		seen := map[string]bool{}
		for _, d := range v.Digests {
			seen[d] = true
		}
		if len(seen) > 1 && v.OK {
			v.OK, v.Problem = false, "digests differ"
		}
		res.OK = res.OK && v.OK
		res.Segments = append(res.Segments, *v)
	}
	sort.Slice(res.Segments, func(i, j int) bool { return res.Segments[i].BaseOffset < res.Segments[j].BaseOffset })
	if asJSON {
		json.NewEncoder(stdout).Encode(res)
	} else {
		printVerifyCluster(stdout, &res)
	}
	if !res.OK {
		return fmt.Errorf("%w: see docs/operations.md, Comparing replicas", errDigestMismatch)
	}
	return nil
}

func printVerifyCluster(w io.Writer, r *clusterVerifyResult) {
	for _, n := range r.Nodes {
		if n.Error != "" {
			fmt.Fprintf(w, "node %s (%s): NOT CHECKED: %s\n", n.NodeID, n.Address, n.Error)
			continue
		}
		fmt.Fprintf(w, "node %s (%s): %d sealed segments from offset %d\n", n.NodeID, n.Address, n.Segments, n.FirstOffset)
	}
	bad := 0
	for _, s := range r.Segments {
		if !s.OK {
			bad++
			fmt.Fprintf(w, "%s: DIFFERS: %s %v\n", segment.FileName(s.BaseOffset), s.Problem, s.Digests)
		}
	}
	if bad == 0 && r.OK {
		fmt.Fprintf(w, "%d sealed segments: every replica holds the same bytes\n", len(r.Segments))
	}
}
