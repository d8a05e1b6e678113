package hclogslog

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

// lines decodes the JSON lines written so far and resets buf.
func lines(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("not one JSON object per line: %q: %v", l, err)
		}
		out = append(out, m)
	}
	buf.Reset()
	return out
}

func newJSON(buf *bytes.Buffer, o Options) *Logger {
	return New(slog.New(slog.NewJSONHandler(buf, &slog.HandlerOptions{Level: LevelTrace})).With("node", "n1"), o)
}

// Every hclog level becomes the slog level of the same name, in slog's
// schema (time, level, msg, attributes), with the name as "component".
func TestLevelsAndSchema(t *testing.T) {
	var buf bytes.Buffer
	l := newJSON(&buf, Options{Name: "raft", Level: hclog.Trace})
	for _, c := range []struct {
		log  func(string, ...any)
		want string
	}{
		{l.Trace, "DEBUG-4"}, {l.Debug, "DEBUG"}, {l.Info, "INFO"}, {l.Warn, "WARN"}, {l.Error, "ERROR"},
	} {
		c.log("entering follower state", "follower", "n1", "leader-id", "")
		got := lines(t, &buf)
		if len(got) != 1 {
			t.Fatalf("%s: %d lines", c.want, len(got))
		}
		m := got[0]
		if m["level"] != c.want || m["msg"] != "entering follower state" || m["component"] != "raft" ||
			m["node"] != "n1" || m["follower"] != "n1" || m["time"] == nil {
			t.Fatalf("%s: %v", c.want, m)
		}
		for k := range m {
			if strings.HasPrefix(k, "@") {
				t.Fatalf("hclog key %q in a slog line: %v", k, m)
			}
		}
	}
}

// Arguments: errors as their text, durations as strings, hclog.Fmt
// formatted, a dangling key kept; With and Named add to the line.
func TestArgsWithNamed(t *testing.T) {
	var buf bytes.Buffer
	l := newJSON(&buf, Options{Name: "raft"})
	l.With("peer", "n2").Named("replication").Warn("failed", "error", errors.New("boom"),
		"backoff time", 50*time.Millisecond, "command", hclog.Fmt("%d-%s", 7, "x"), "dangling")
	m := lines(t, &buf)[0]
	if m["component"] != "raft.replication" || m["peer"] != "n2" || m["error"] != "boom" ||
		m["backoff time"] != "50ms" || m["command"] != "7-x" || m[hclog.MissingKey] != "dangling" {
		t.Fatalf("line %v", m)
	}
	if l.Named("x").Name() != "raft.x" || l.ResetNamed("y").Name() != "y" {
		t.Fatalf("names %q %q", l.Named("x").Name(), l.ResetNamed("y").Name())
	}
	if got := l.With("a", 1).ImpliedArgs(); len(got) != 2 || got[0] != "a" {
		t.Fatalf("implied args %v", got)
	}
}

// The level is shared with derived loggers and checked before writing;
// Remap picks the level of each line.
func TestLevelAndRemap(t *testing.T) {
	var buf bytes.Buffer
	l := newJSON(&buf, Options{Name: "raft", Remap: func(level hclog.Level, msg string, _ []any) hclog.Level {
		if msg == "failed to heartbeat to" {
			return hclog.Warn
		}
		return level
	}})
	if l.IsDebug() || !l.IsInfo() || l.GetLevel() != hclog.Info {
		t.Fatalf("default level: debug %v info %v %v", l.IsDebug(), l.IsInfo(), l.GetLevel())
	}
	l.Debug("hidden")
	l.Error("failed to heartbeat to", "peer", "n3")
	l.Error("failed to persist vote")
	got := lines(t, &buf)
	if len(got) != 2 || got[0]["level"] != "WARN" || got[1]["level"] != "ERROR" {
		t.Fatalf("lines %v", got)
	}
	named := l.Named("x")
	l.SetLevel(hclog.Error)
	named.Warn("hidden too")
	if named.IsWarn() || len(lines(t, &buf)) != 0 {
		t.Fatal("SetLevel not shared with a derived logger")
	}
	l.Log(hclog.Off, "never")
	if len(lines(t, &buf)) != 0 {
		t.Fatal("a line at Off was logged")
	}
}

// The standard-library adapters log each line, inferring "[WARN]"-style
// prefixes when asked.
func TestStandardLogger(t *testing.T) {
	var buf bytes.Buffer
	l := newJSON(&buf, Options{Name: "raft"})
	l.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true}).Print("[WARN] slow disk")
	l.StandardLogger(nil).Print("plain")
	l.StandardLogger(&hclog.StandardLoggerOptions{ForceLevel: hclog.Error}).Print("[INFO] forced")
	got := lines(t, &buf)
	if len(got) != 3 || got[0]["level"] != "WARN" || got[0]["msg"] != "slow disk" ||
		got[1]["level"] != "INFO" || got[1]["msg"] != "plain" || got[2]["level"] != "ERROR" {
		t.Fatalf("lines %v", got)
	}
}

type peer struct{ addr string }

func (p *peer) String() string { return "Node at " + p.addr }

// A Stringer argument is logged as its String (hashicorp/raft passes its
// *Raft, which slog would print as {}), and an argument whose key the
// slog logger already carries is renamed rather than repeated.
func TestStringersAndReservedKeys(t *testing.T) {
	var buf bytes.Buffer
	l := newJSON(&buf, Options{Name: "raft", Reserved: []string{"node"}})
	l.Info("entering candidate state", "node", &peer{"10.0.0.1:7000"}, "term", 2)
	line := strings.TrimSpace(buf.String())
	if strings.Count(line, `"node":`) != 1 {
		t.Fatalf("key node twice: %s", line)
	}
	m := lines(t, &buf)[0]
	if m["node"] != "n1" || m["raft_node"] != "Node at 10.0.0.1:7000" || m["term"] != float64(2) {
		t.Fatalf("line %v", m)
	}
}
