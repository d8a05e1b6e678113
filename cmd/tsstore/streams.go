package main

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"
)

func runStreams(args []string, stdout, stderr io.Writer) error {
	var cf clientFlags
	fs := newFlagSet("streams", stderr, "streams [--prefix P] [--json]")
	cf.register(fs)
	prefix := fs.String("prefix", "", "only streams whose name starts with this")
	if err := fs.Parse(args); err != nil {
		return err
	}
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
