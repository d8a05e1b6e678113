package main

import (
	"bufio"
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/tsstore/tsstore/client"
)

type appendFlags struct {
	cf                          clientFlags
	stream, typ, data, producer string
	stdin                       bool
}

func newAppendCmd() *cobra.Command {
	var f appendFlags
	cmd := &cobra.Command{
		Use:   "append --stream S --type T (--data PAYLOAD | --stdin) [--producer ID]",
		Short: "append events to the store",
		Args:  noArgs,
	}
	fs := cmd.Flags()
	f.cf.register(fs)
	fs.StringVar(&f.stream, "stream", "", "stream to append to (required)")
	fs.StringVar(&f.typ, "type", "", "event type (required)")
	fs.StringVar(&f.data, "data", "", "payload of one event (--data '' appends an empty one)")
	fs.BoolVar(&f.stdin, "stdin", false, "append one event per line of standard input, in one atomic batch")
	fs.StringVar(&f.producer, "producer", "", "producer id for idempotent retries (default: none: the append is sent once, and a server keeps no state for it)")
	cmd.MarkFlagRequired("stream")
	cmd.MarkFlagRequired("type")
	cmd.MarkFlagsMutuallyExclusive("data", "stdin")
	cmd.MarkFlagsOneRequired("data", "stdin")
	cmd.RunE = func(cmd *cobra.Command, args []string) error { return runAppend(cmd, &f) }
	return cmd
}

func runAppend(cmd *cobra.Command, f *appendFlags) error {
	stdout := cmd.OutOrStdout()
	cf, stream, typ, data, stdin, producer := &f.cf, &f.stream, &f.typ, &f.data, &f.stdin, &f.producer
	if *stream == "" || *typ == "" {
		return fmt.Errorf("%w: --stream and --type must not be empty", errUsage)
	}
	var events []client.Event
	if *stdin {
		sc := bufio.NewScanner(cmd.InOrStdin())
		sc.Buffer(make([]byte, 1<<20), 64<<20)
		for sc.Scan() {
			events = append(events, client.Event{Stream: *stream, Type: *typ, Payload: append([]byte(nil), sc.Bytes()...)})
		}
		if err := sc.Err(); err != nil {
			return err
		}
	} else {
		events = append(events, client.Event{Stream: *stream, Type: *typ, Payload: []byte(*data)})
	}
	if len(events) == 0 {
		return fmt.Errorf("%w: no events on standard input", errUsage)
	}
	cl, ctx, cancel, err := cf.connect()
	if err != nil {
		return err
	}
	defer cancel()
	defer cl.Close()
	// Without --producer the append leaves no producer behind on the
	// server (Client.AppendOnce): it is sent once and not retried.
	var res client.AppendResult
	if *producer == "" {
		res, err = cl.AppendOnce(ctx, events...)
	} else {
		res, err = cl.NewProducer(*producer).Append(ctx, events...)
	}
	if err != nil {
		return err
	}
	if cf.json {
		return json.NewEncoder(stdout).Encode(toAppendJSON(res))
	}
	fmt.Fprintf(stdout, "appended %d event(s) at offsets %d..%d (raft index %d)\n",
		len(events), res.FirstOffset, res.LastOffset, res.RaftIndex)
	return nil
}
