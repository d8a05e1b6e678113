package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

func newStreamsCmd() *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{Use: "streams [--prefix P]", Short: "list streams with their versions", Args: noArgs}
	cf.register(cmd.Flags())
	prefix := cmd.Flags().String("prefix", "", "only streams whose name starts with this")
	cmd.RunE = func(cmd *cobra.Command, args []string) error { return runStreams(cmd, &cf, prefix) }
	cmd.AddCommand(newStreamsDeleteCmd())
	return cmd
}

func newStreamsDeleteCmd() *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{Use: "delete STREAM", Short: "delete a stream's events (reads of it get NotFound; the leader drops them from the sealed segments)",
		Long: "delete marks STREAM deleted through Raft (admin role; any node forwards to the leader): reads of it are refused with NotFound from then on, and the leader's retention ticks drop its events from the sealed segments on every replica (those still in the active segment once it is sealed). Deleting a run's stream deletes the run's events; its snapshots stay. Producer dedup and other streams are not affected; the stream may be written again (docs/operations.md, Deleting a stream).",
		Args: cobra.ExactArgs(1)}
	cf.register(cmd.Flags())
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return retentionCall(cmd, &cf, func(ctx context.Context, c pb.RetentionClient) (proto.Message, error) {
			return c.DeleteStream(ctx, &pb.DeleteStreamRequest{Stream: args[0]})
		}, func(w io.Writer, m proto.Message) error {
			r := m.(*pb.DeleteStreamResponse)
			_, err := fmt.Fprintf(w, "stream %q deleted: its %d events up to offset %d (they leave the sealed segments at the next retention ticks)\n", args[0], r.Version, r.UptoOffset)
			return err
		})
	}
	return cmd
}

func runStreams(cmd *cobra.Command, cf *clientFlags, prefix *string) error {
	stdout, stderr := stdio(cmd)
	cl, ctx, cancel, err := cf.connect()
	if err != nil {
		return err
	}
	defer cancel()
	defer cl.Close()
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	enc := json.NewEncoder(stdout)
	if !cf.json {
		fmt.Fprintln(tw, "STREAM\tVERSION\tFIRST\tLAST\tLAST EVENT")
	}
	n := 0
	for st, err := range cl.ListStreams(ctx, *prefix) {
		if err != nil {
			return err
		}
		n++
		if cf.json {
			enc.Encode(toStreamJSON(st))
			continue
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\n", st.Name, st.Version, st.FirstOffset, st.LastOffset,
			st.LastTimestamp.UTC().Format(time.RFC3339Nano))
	}
	if cf.json {
		return nil
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if n == 0 {
		fmt.Fprintln(stderr, "no streams")
	}
	return nil
}
