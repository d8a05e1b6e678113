package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func runTail(args []string, stdout, stderr io.Writer) error {
	var cf clientFlags
	var sf selectFlags
	fs := newFlagSet("tail", stderr, "tail [--from N | --since T] [--stream S [--version V]] [--prefix P] [--type T]...")
	cf.register(fs)
	sf.register(fs, false)
	fs.Lookup("timeout").DefValue = "0s"
	cf.timeout = 0
	live := fs.Bool("live", true, "with no --from/--since/--version, start at the log end (false: from offset 0)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	opts, err := sf.options()
	if err != nil {
		return err
	}
	cl, _, cancel, err := cf.connect()
	if err != nil {
		return err
	}
	cancel()
	defer cl.Close()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	from := sf.from
	if *live && !sf.positioned() {
		st, err := cl.Status(ctx)
		if err != nil {
			return err
		}
		from = st.NextOffset
	}
	enc := json.NewEncoder(stdout)
	for ev, err := range cl.Subscribe(ctx, from, opts...) {
		if err != nil {
			if errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		}
		if cf.json {
			enc.Encode(toEventJSON(ev))
		} else {
			printEvent(stdout, ev)
		}
		if f, ok := stdout.(*os.File); ok {
			f.Sync()
		}
	}
	return nil
}
