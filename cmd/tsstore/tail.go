package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"

	"github.com/spf13/cobra"
)

type tailFlags struct {
	cf   clientFlags
	sf   selectFlags
	live bool
}

func newTailCmd() *cobra.Command {
	var f tailFlags
	cmd := &cobra.Command{
		Use:   "tail [--from N | --since T] [--stream S [--version V]] [--prefix P] [--type T]...",
		Short: "follow events live as they commit (until Ctrl-C)",
		Args:  noArgs,
	}
	fs := cmd.Flags()
	f.cf.registerTimeout(fs, 0)
	f.sf.register(fs, false)
	fs.BoolVar(&f.live, "live", true, "with no --from/--since/--version, start at the log end (false: from offset 0)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error { return runTail(cmd, &f) }
	return cmd
}

func runTail(cmd *cobra.Command, f *tailFlags) error {
	stdout := cmd.OutOrStdout()
	cf, sf, live := &f.cf, &f.sf, &f.live
	opts, err := sf.options()
	if err != nil {
		return err
	}
	cl, ctx, stop, err := cf.connect()
	if err != nil {
		return err
	}
	defer stop()
	defer cl.Close()
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
