package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/tsstore/tsstore/client"
)

func runAppend(args []string, stdout, stderr io.Writer) error {
	var cf clientFlags
	fs := newFlagSet("append", stderr, "append --stream S --type T [--data JSON | --stdin] [--producer ID]")
	cf.register(fs)
	stream := fs.String("stream", "", "stream to append to (required)")
	typ := fs.String("type", "", "event type (required)")
	data := fs.String("data", "", "payload of one event")
	stdin := fs.Bool("stdin", false, "append one event per line of standard input, in one atomic batch")
	producer := fs.String("producer", "", "producer id for idempotent retries (default: none: the append is sent once, and a server keeps no state for it)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *stream == "" || *typ == "" {
		return fmt.Errorf("%w: --stream and --type are required", errUsage)
	}
	var events []client.Event
	if *stdin {
		sc := bufio.NewScanner(os.Stdin)
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
