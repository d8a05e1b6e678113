package main

import (
	"encoding/json"
	"fmt"
	"io"
	"time"
	"unicode/utf8"

	"github.com/tsstore/tsstore/client"
)

func runRead(args []string, stdout, stderr io.Writer) error {
	var cf clientFlags
	fs := newFlagSet("read", stderr, "read [--from N] [--to N] [--linearizable] [--json]")
	cf.register(fs)
	from := fs.Uint64("from", 0, "first offset")
	to := fs.Uint64("to", 0, "end offset, exclusive (0: the end of the log)")
	linear := fs.Bool("linearizable", false, "linearizable read (confirmed with the leader)")
	limit := fs.Int("limit", 0, "stop after this many events (0: no limit)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *to != 0 && *to < *from {
		return fmt.Errorf("%w: --to %d is before --from %d", errUsage, *to, *from)
	}
	cl, ctx, cancel, err := cf.connect()
	if err != nil {
		return err
	}
	defer cancel()
	defer cl.Close()
	var opts []client.ReadOption
	if *to != 0 {
		opts = append(opts, client.To(*to))
	}
	if *linear {
		opts = append(opts, client.Linearizable())
	}
	enc := json.NewEncoder(stdout)
	n := 0
	for ev, err := range cl.Replay(ctx, *from, opts...) {
		if err != nil {
			return err
		}
		if cf.json {
			enc.Encode(ev)
		} else {
			payload := string(ev.Payload)
			if !utf8.ValidString(payload) {
				payload = fmt.Sprintf("<%d bytes>", len(ev.Payload))
			}
			fmt.Fprintf(stdout, "%d\t%s\t%s@%d\t%s\t%s\n", ev.Offset, ev.Timestamp.UTC().Format(time.RFC3339Nano),
				ev.Stream, ev.StreamVersion, ev.Type, payload)
		}
		n++
		if *limit > 0 && n >= *limit {
			break
		}
	}
	return nil
}
