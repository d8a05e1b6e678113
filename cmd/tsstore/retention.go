package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

	"github.com/tsstore/tsstore/client"
	"github.com/tsstore/tsstore/internal/bytesize"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/segment"
)

func newRetentionCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "retention", Short: "set, remove and list the cluster's retention policies",
		Long: "retention manages the policies by stream prefix that the leader applies every --retention-interval: whole sealed segments whose every stream's policy lets them go are dropped on every replica (docs/operations.md, Retention).",
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return cmd.Help() }}

	var setCF clientFlags
	set := &cobra.Command{Use: "set PREFIX [--max-age 30d] [--max-bytes 2TB]", Short: "set the retention policy of a stream prefix",
		Example: "  tsstore retention set run/ --max-age 30d --max-bytes 2TB", Args: exactArgs("PREFIX")}
	setCF.register(set.Flags())
	maxAge := set.Flags().String("max-age", "", "drop sealed segments whose last event is older than this (units: s, m, h, d, w; e.g. 30d)")
	maxBytes := set.Flags().String("max-bytes", "", "keep this much of the prefix's segments, drop older ones (e.g. 500GiB, 2TB)")
	set.RunE = func(cmd *cobra.Command, pos []string) error {
		p := &pb.RetentionPolicy{Prefix: pos[0]}
		if *maxAge != "" {
			d, err := parseAge(*maxAge)
			if err != nil {
				return fmt.Errorf("%w: --max-age: %v", errUsage, err)
			}
			p.MaxAgeSeconds = int64(d / time.Second)
		}
		if *maxBytes != "" {
			n, err := bytesize.Parse(*maxBytes)
			if err != nil {
				return fmt.Errorf("%w: --max-bytes: %v", errUsage, err)
			}
			p.MaxBytes = n
		}
		if p.MaxAgeSeconds == 0 && p.MaxBytes == 0 {
			return fmt.Errorf("%w: give --max-age, --max-bytes or both (to remove a policy: tsstore retention remove %s)", errUsage, pos[0])
		}
		return retentionCall(cmd, &setCF, func(ctx context.Context, c pb.RetentionClient) (proto.Message, error) {
			return c.SetRetention(ctx, &pb.SetRetentionRequest{Policy: p})
		}, func(w io.Writer, m proto.Message) error {
			_, err := fmt.Fprintf(w, "retention of %q set: %s (policy version %d)\n", p.Prefix, policyText(p), m.(*pb.SetRetentionResponse).PolicyVersion)
			return err
		})
	}

	var rmCF clientFlags
	rm := &cobra.Command{Use: "remove PREFIX", Short: "remove the retention policy of a stream prefix", Args: exactArgs("PREFIX")}
	rmCF.register(rm.Flags())
	rm.RunE = func(cmd *cobra.Command, pos []string) error {
		return retentionCall(cmd, &rmCF, func(ctx context.Context, c pb.RetentionClient) (proto.Message, error) {
			return c.SetRetention(ctx, &pb.SetRetentionRequest{Policy: &pb.RetentionPolicy{Prefix: pos[0]}, Remove: true})
		}, func(w io.Writer, m proto.Message) error {
			_, err := fmt.Fprintf(w, "retention of %q removed (policy version %d)\n", pos[0], m.(*pb.SetRetentionResponse).PolicyVersion)
			return err
		})
	}

	var listCF clientFlags
	list := &cobra.Command{Use: "list", Short: "list the retention policies, the first kept offset and the sealed segments", Args: noArgs}
	listCF.register(list.Flags())
	list.RunE = func(cmd *cobra.Command, _ []string) error {
		return retentionCall(cmd, &listCF, func(ctx context.Context, c pb.RetentionClient) (proto.Message, error) {
			return c.ListRetention(ctx, &pb.ListRetentionRequest{})
		}, func(w io.Writer, m proto.Message) error { return printRetention(w, m.(*pb.ListRetentionResponse)) })
	}
	cmd.AddCommand(set, rm, list)
	return cmd
}

func newCompactCmd() *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{Use: "compact [--dry-run]", Short: "apply the retention policies and segment rewrites now (--dry-run: show what they would remove)", Args: noArgs}
	cf.register(cmd.Flags())
	dry := cmd.Flags().Bool("dry-run", false, "only show the cut the leader would commit, the segments it would drop and the segment rewrites (deleted streams, finished runs) it would make")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return retentionCall(cmd, &cf, func(ctx context.Context, c pb.RetentionClient) (proto.Message, error) {
			return c.Compact(ctx, &pb.CompactRequest{DryRun: *dry})
		}, func(w io.Writer, m proto.Message) error { return printCompact(w, m.(*pb.CompactResponse), *dry) })
	}
	return cmd
}

// retentionCall makes one Retention call to the first --addr node (it
// forwards what needs the leader) and prints the answer.
func retentionCall(cmd *cobra.Command, cf *clientFlags, call func(context.Context, pb.RetentionClient) (proto.Message, error),
	text func(io.Writer, proto.Message) error) error {
	cl, ctx, cancel, err := cf.connect()
	if err != nil {
		return err
	}
	defer cancel()
	defer cl.Close()
	c, err := retentionClient(cl, cf.addrList()[0])
	if err != nil {
		return err
	}
	resp, err := call(ctx, c)
	if err != nil {
		return statusError(err)
	}
	if cf.json {
		return printJSON(cmd.OutOrStdout(), resp)
	}
	return text(cmd.OutOrStdout(), resp)
}

func retentionClient(cl *client.Client, addr string) (pb.RetentionClient, error) {
	conn, err := cl.NodeConn(addr)
	if err != nil {
		return nil, err
	}
	return pb.NewRetentionClient(conn), nil
}

func policyText(p *pb.RetentionPolicy) string {
	var parts []string
	if p.MaxAgeSeconds > 0 {
		parts = append(parts, "max age "+ageText(time.Duration(p.MaxAgeSeconds)*time.Second))
	}
	if p.MaxBytes > 0 {
		parts = append(parts, "max bytes "+humanBytes(p.MaxBytes))
	}
	return strings.Join(parts, ", ")
}

func ageText(d time.Duration) string {
	if d >= 24*time.Hour && d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	}
	return d.String()
}

func printRetention(w io.Writer, r *pb.ListRetentionResponse) error {
	fmt.Fprintf(w, "node %s: first kept offset %d, next offset %d, policy version %d\n", r.NodeId, r.FirstOffset, r.NextOffset, r.PolicyVersion)
	if len(r.Policies) == 0 {
		fmt.Fprintln(w, "no retention policy: nothing is ever removed")
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if len(r.Policies) > 0 {
		fmt.Fprintln(tw, "\nPREFIX\tMAX AGE\tMAX BYTES")
		for _, p := range r.Policies {
			age, size := "-", "-"
			if p.MaxAgeSeconds > 0 {
				age = ageText(time.Duration(p.MaxAgeSeconds) * time.Second)
			}
			if p.MaxBytes > 0 {
				size = humanBytes(p.MaxBytes)
			}
			fmt.Fprintf(tw, "%q\t%s\t%s\n", p.Prefix, age, size)
		}
	}
	if len(r.Segments) > 0 {
		fmt.Fprintln(tw, "\nSEGMENT\tOFFSETS\tSIZE\tLAST EVENT\tDIGEST\tSTATE\tOBJECT")
		for _, s := range r.Segments {
			obj := s.ObjectKey
			if obj == "" {
				obj = "-"
			}
			fmt.Fprintf(tw, "%s\t[%d, %d)\t%s\t%s\t%08x\t%s\t%s\n", segment.FileName(s.BaseOffset), s.BaseOffset, s.NextOffset,
				humanBytes(int64(s.SizeBytes)), time.Unix(0, s.LastTimestamp).UTC().Format(time.RFC3339), s.Digest, s.State, obj)
		}
	}
	return tw.Flush()
}

func printCompact(w io.Writer, r *pb.CompactResponse, dry bool) error {
	switch {
	case r.Cut == 0:
		fmt.Fprintln(w, "no sealed segment to drop")
	case dry:
		fmt.Fprintf(w, "would drop %d sealed segments (%s): every offset below %d\n", len(r.Segments), humanBytes(int64(r.Bytes)), r.Cut)
	default:
		fmt.Fprintf(w, "committed: dropped %d sealed segments (%s) on every replica; the first kept offset is %d\n", len(r.Segments), humanBytes(int64(r.Bytes)), r.Cut)
	}
	for _, s := range r.Segments {
		fmt.Fprintf(w, "  %s [%d, %d) %s: %s\n", segment.FileName(s.BaseOffset), s.BaseOffset, s.NextOffset, humanBytes(int64(s.SizeBytes)), s.Reason)
	}
	if r.Kept != "" {
		fmt.Fprintf(w, "kept: %s\n", r.Kept)
	}
	if len(r.Rewrites) > 0 {
		verb := "would make"
		if !dry {
			verb = fmt.Sprintf("committed %d of", r.RewritesCommitted)
		}
		var before, after int64
		for _, x := range r.Rewrites {
			before += int64(x.SizeBefore)
			after += int64(x.SizeAfter)
		}
		fmt.Fprintf(w, "%s %d segment rewrites (%s -> %s):\n", verb, len(r.Rewrites), humanBytes(before), humanBytes(after))
		for _, x := range r.Rewrites {
			kept := "nothing"
			if len(x.KeptTypes) > 0 {
				kept = strings.Join(x.KeptTypes, ", ")
			}
			fmt.Fprintf(w, "  %s [%d, %d) %s -> %s: %s %s up to offset %d (keeps %s)\n", segment.FileName(x.BaseOffset), x.BaseOffset, x.NextOffset,
				humanBytes(int64(x.SizeBefore)), humanBytes(int64(x.SizeAfter)), x.Reason, x.Stream, x.Upto, kept)
		}
	}
	return nil
}

// parseAge parses a duration that may also be in days (d) or weeks (w),
// e.g. 30d, 2w, 36h.
func parseAge(s string) (time.Duration, error) {
	for suffix, unit := range map[string]time.Duration{"d": 24 * time.Hour, "w": 7 * 24 * time.Hour} {
		if v, ok := strings.CutSuffix(s, suffix); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil || n <= 0 {
				return 0, fmt.Errorf("%q: want a positive number of %s", s, suffix)
			}
			return time.Duration(n * float64(unit)), nil
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%q: want a positive duration such as 30d, 12h or 90m", s)
	}
	return d, nil
}
