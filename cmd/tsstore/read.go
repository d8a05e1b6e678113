package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"time"
	"unicode/utf8"

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
	fs      *flag.FlagSet
}

type multiFlag []string

func (m *multiFlag) String() string     { return fmt.Sprint(*m) }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func (s *selectFlags) register(fs *flag.FlagSet, withTo bool) {
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
	set := map[string]bool{}
	s.fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	return set["from"] || set["since"] || set["version"]
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

func runRead(args []string, stdout, stderr io.Writer) error {
	var cf clientFlags
	var sf selectFlags
	fs := newFlagSet("read", stderr, "read [--from N] [--to N] [--since T] [--stream S [--version V]] [--prefix P] [--type T]... [--local]")
	cf.register(fs)
	sf.register(fs, true)
	linear := fs.Bool("linearizable", false, "linearizable read, confirmed with the leader (the default; kept for scripts)")
	local := fs.Bool("local", false, "read what the answering node has applied, even without a leader; a lagging node ends the read early")
	limit := fs.Int("limit", 0, "stop after this many events (0: no limit)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	opts, err := sf.options()
	if err != nil {
		return err
	}
	switch {
	case *linear && *local:
		return fmt.Errorf("%w: --linearizable and --local exclude each other", errUsage)
	case *local:
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
		if err != nil {
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
