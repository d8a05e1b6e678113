package main

import (
	"encoding/json"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

func newStreamsCmd() *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{Use: "streams [--prefix P]", Short: "list streams with their versions", Args: noArgs}
	cf.register(cmd.Flags())
	prefix := cmd.Flags().String("prefix", "", "only streams whose name starts with this")
	cmd.RunE = func(cmd *cobra.Command, args []string) error { return runStreams(cmd, &cf, prefix) }
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
