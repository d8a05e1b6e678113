package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

func TestRaftLevel(t *testing.T) {
	for _, c := range []struct {
		level hclog.Level
		msg   string
		args  []any
		want  hclog.Level
	}{
		{hclog.Error, "failed to heartbeat to", []any{"peer", "10.0.0.3:7000", "error", errors.New("dial tcp: connection refused")}, hclog.Warn},
		{hclog.Error, "failed to appendEntries to", []any{"peer", "n3", "error", fmt.Errorf("rpc: %w", raft.ErrTransportShutdown)}, hclog.Info},
		{hclog.Error, "failed to take snapshot", []any{"error", raft.ErrNothingNewToSnapshot}, hclog.Info},
		{hclog.Error, "failed to make requestVote RPC", []any{"target", "n2", "error", errors.New("i/o timeout")}, hclog.Warn},
		// Real trouble stays an error, and nothing is raised.
		{hclog.Error, "failed to append to logs", []any{"error", errors.New("disk full")}, hclog.Error},
		{hclog.Error, "failed to persist vote", []any{"error", errors.New("EIO")}, hclog.Error},
		{hclog.Warn, "failed to contact quorum of nodes, stepping down", nil, hclog.Warn},
		{hclog.Info, "entering follower state", []any{"error", raft.ErrTransportShutdown}, hclog.Info},
	} {
		if got := raftLevel(c.level, c.msg, c.args); got != c.want {
			t.Errorf("%v %q %v: %v, want %v", c.level, c.msg, c.args, got, c.want)
		}
	}
}

// syncBuffer is a bytes.Buffer for concurrent writers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Raft's lines go through the node's slog logger (one schema, the node
// attribute, a component), and a stopped peer and a clean stop are not
// logged as errors.
func TestRaftLogsInNodeSchema(t *testing.T) {
	var logs syncBuffer
	tc := newTestCluster(t, 3, func(c *Config) {
		c.Logger = slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	})
	leader := tc.leader()
	var stopped string
	for i, n := range tc.nodes {
		if n != leader {
			stopped = n.cfg.RaftAddr
			n.Close()
			tc.nodes[i] = nil
			break
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(logs.String(), `"msg":"failed to heartbeat to"`) {
		if time.Now().After(deadline) {
			t.Fatal("the leader never logged a failed heartbeat to the stopped follower")
		}
		time.Sleep(20 * time.Millisecond)
	}
	tc.close()

	raftLines := 0
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("not a JSON line: %q", line)
		}
		if m["level"] == nil || m["msg"] == nil || m["time"] == nil || m["@level"] != nil || m["@message"] != nil {
			t.Fatalf("line outside the node's schema: %q", line)
		}
		comp, _ := m["component"].(string)
		if !strings.HasPrefix(comp, "raft") {
			continue
		}
		raftLines++
		if strings.Count(line, `"node":`) != 1 {
			t.Fatalf("raft line with the node key twice (or not at all): %q", line)
		}
		if m["node"] == nil {
			t.Fatalf("raft line without the node: %q", line)
		}
		msg, _ := m["msg"].(string)
		if m["level"] == "ERROR" && (raftPeerTrouble[msg] || strings.Contains(line, "transport shutdown")) {
			t.Fatalf("expected event logged as an error: %q", line)
		}
		if msg == "failed to heartbeat to" && m["peer"] == stopped && m["level"] != "WARN" {
			t.Fatalf("failed heartbeat at %v: %q", m["level"], line)
		}
	}
	if raftLines == 0 {
		t.Fatal("no raft lines in the node's log")
	}
}
