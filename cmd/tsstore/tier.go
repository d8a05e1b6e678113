package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

	pb "github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/segment"
)

// newTierCmd is `tsstore tier status`: where each sealed segment's bytes
// are, as the node answering sees it (docs/operations.md, Cold tiering).
func newTierCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "tier", Short: "cold tiering: where the sealed segments are",
		Args: noArgs, RunE: func(cmd *cobra.Command, args []string) error { return cmd.Help() }}
	var cf clientFlags
	status := &cobra.Command{Use: "status", Short: "per sealed segment: local, tiered+local or tiered (only in the tier target, read from there), and the upload backlog, as the first --addr node sees it",
		Args: noArgs}
	cf.register(status.Flags())
	status.RunE = func(cmd *cobra.Command, _ []string) error {
		return retentionCall(cmd, &cf, func(ctx context.Context, c pb.RetentionClient) (proto.Message, error) {
			return c.ListRetention(ctx, &pb.ListRetentionRequest{})
		}, func(w io.Writer, m proto.Message) error { return printTierStatus(w, m.(*pb.ListRetentionResponse)) })
	}
	cmd.AddCommand(status)
	return cmd
}

// tierLocation says where one manifest segment's bytes are for the
// answering node.
func tierLocation(s *pb.ManifestSegment) string {
	switch {
	case s.State == "tiered" && s.LocalCopy:
		return "tiered+local"
	case s.State == "tiered":
		return "tiered"
	}
	return s.State // local or dropped
}

func printTierStatus(w io.Writer, r *pb.ListRetentionResponse) error {
	if r.TierTarget == "" {
		fmt.Fprintf(w, "node %s: cold tiering is off (no tier-dir or tier-s3-bucket)\n", r.NodeId)
	} else {
		fmt.Fprintf(w, "node %s: tier target %s\n", r.NodeId, r.TierTarget)
		fmt.Fprintf(w, "backlog: %d segments (%s) the policy sends to the store are not tiered yet\n",
			r.TierBacklogSegments, humanBytes(int64(r.TierBacklogBytes)))
	}
	count := map[string]int{}
	size := map[string]int64{}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nSEGMENT\tOFFSETS\tSIZE\tWHERE\tOBJECT")
	for _, s := range r.Segments {
		where := tierLocation(s)
		count[where]++
		size[where] += int64(s.SizeBytes)
		if where == "dropped" {
			continue
		}
		obj := s.ObjectKey
		if obj == "" {
			obj = "-"
		}
		fmt.Fprintf(tw, "%s\t[%d, %d)\t%s\t%s\t%s\n", segment.FileName(s.BaseOffset), s.BaseOffset, s.NextOffset,
			humanBytes(int64(s.SizeBytes)), where, obj)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "\nlocal %d (%s), tiered+local %d (%s), tiered %d (%s); the active segment is always local\n",
		count["local"], humanBytes(size["local"]), count["tiered+local"], humanBytes(size["tiered+local"]),
		count["tiered"], humanBytes(size["tiered"]))
	return err
}
