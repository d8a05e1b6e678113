package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/tsstore/tsstore/client"
)

// selectFlags choose what a read or tail delivers.
type selectFlags struct {
	from    uint64
	to      uint64
	since   string
	stream  string
	version uint64
	prefix  string
	types   multiFlag
	fs      *pflag.FlagSet
}

type multiFlag []string

func (m *multiFlag) String() string     { return fmt.Sprint(*m) }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }
func (m *multiFlag) Type() string       { return "string" }

func (s *selectFlags) register(fs *pflag.FlagSet, withTo bool) {
	s.fs = fs
	fs.Uint64Var(&s.from, "from", 0, "first global offset")
	if withTo {
		fs.Uint64Var(&s.to, "to", 0, "end offset, exclusive (0: the end of the log)")
	}
	fs.StringVar(&s.since, "since", "", "start at the first event at or after this time (RFC 3339, or a duration ago like 15m)")
	fs.StringVar(&s.stream, "stream", "", "only this stream (served from the per-stream index)")
	fs.Uint64Var(&s.version, "version", 0, "with --stream: start at this stream version (1-based)")
	fs.StringVar(&s.prefix, "prefix", "", "only streams whose name starts with this")
	fs.Var(&s.types, "type", "only this event type (repeatable)")
}

// positioned reports whether a start position was given.
func (s *selectFlags) positioned() bool {
	return s.fs.Changed("from") || s.fs.Changed("since") || s.fs.Changed("version")
}

func (s *selectFlags) options() ([]client.ReadOption, error) {
	var opts []client.ReadOption
	if s.to != 0 {
		if s.to < s.from {
			return nil, fmt.Errorf("%w: --to %d is before --from %d", errUsage, s.to, s.from)
		}
		opts = append(opts, client.To(s.to))
	}
	if s.since != "" {
		t, err := parseSince(s.since)
		if err != nil {
			return nil, err
		}
		opts = append(opts, client.FromTime(t))
	}
	if s.version != 0 && s.stream == "" {
		return nil, fmt.Errorf("%w: --version needs --stream", errUsage)
	}
	if s.stream != "" {
		opts = append(opts, client.Stream(s.stream))
		if s.version != 0 {
			opts = append(opts, client.FromVersion(s.version))
		}
	}
	if s.prefix != "" {
		opts = append(opts, client.StreamPrefix(s.prefix))
	}
	if len(s.types) > 0 {
		opts = append(opts, client.EventTypes(s.types...))
	}
	return opts, nil
}

func parseSince(v string) (time.Time, error) { return parseTimeFlag("--since", v) }

// parseTimeFlag reads a time flag: an RFC 3339 time, or a duration ago
// (15m), never negative (a time in the future selects nothing).
func parseTimeFlag(name, v string) (time.Time, error) {
	if d, err := time.ParseDuration(v); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("%w: %s %q: a duration ago must not be negative (a time in the future selects nothing)", errUsage, name, v)
		}
		return time.Now().Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, fmt.Errorf("%w: %s %q: want RFC 3339 time or a duration", errUsage, name, v)
	}
	return t, nil
}

type readFlags struct {
	cf            clientFlags
	sf            selectFlags
	linear, local bool
	limit         int
}

func newReadCmd() *cobra.Command {
	var f readFlags
	cmd := &cobra.Command{
		Use:   "read [--from N] [--to N] [--since T] [--stream S [--version V]] [--prefix P] [--type T]... [--local]",
		Short: "replay events from an offset",
		Long: "read replays the selected events and ends at the end of the log (or --to), however long that takes;\n" +
			"Ctrl-C stops it. --timeout bounds it only when given.",
		Args: noArgs,
	}
	fs := cmd.Flags()
	f.cf.registerTimeout(fs, 0) // a replay streams until done or Ctrl-C
	f.sf.register(fs, true)
	fs.BoolVar(&f.linear, "linearizable", false, "linearizable read, confirmed with the leader (the default; kept for scripts)")
	fs.BoolVar(&f.local, "local", false, "read what the answering node has applied, even without a leader; a lagging node ends the read early")
	fs.IntVar(&f.limit, "limit", 0, "stop after this many events (0: no limit)")
	cmd.MarkFlagsMutuallyExclusive("linearizable", "local")
	cmd.RunE = func(cmd *cobra.Command, args []string) error { return runRead(cmd, &f) }
	return cmd
}

func runRead(cmd *cobra.Command, f *readFlags) error {
	stdout := cmd.OutOrStdout()
	cf, sf, limit := &f.cf, &f.sf, &f.limit
	opts, err := sf.options()
	if err != nil {
		return err
	}
	if f.local {
		opts = append(opts, client.Local())
	}
	cl, ctx, cancel, err := cf.connect()
	if err != nil {
		return err
	}
	defer cancel()
	defer cl.Close()
	enc := json.NewEncoder(stdout)
	n := 0
	for ev, err := range cl.Replay(ctx, sf.from, opts...) {
		switch {
		case err != nil && errors.Is(ctx.Err(), context.Canceled):
			return fmt.Errorf("interrupted after %d events: %w", n, err)
		case err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded):
			return fmt.Errorf("--timeout %v reached after %d events (--timeout 0: none): %w", cf.timeout, n, err)
		case err != nil:
			return err
		}
		if cf.json {
			enc.Encode(toEventJSON(ev))
		} else {
			printEvent(stdout, ev)
		}
		n++
		if *limit > 0 && n >= *limit {
			break
		}
	}
	return nil
}

func printEvent(w io.Writer, ev client.RecordedEvent) {
	payload := string(ev.Payload)
	if !utf8.ValidString(payload) {
		payload = fmt.Sprintf("<%d bytes>", len(ev.Payload))
	}
	fmt.Fprintf(w, "%d\t%s\t%s@%d\t%s\t%s\n", ev.Offset, ev.Timestamp.UTC().Format(time.RFC3339Nano),
		ev.Stream, ev.StreamVersion, ev.Type, payload)
}
