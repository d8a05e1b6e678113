package main

import (
	"context"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
	"time"
)

// system is one peer cluster as the workloads see it. Events go to
// streams: NATS subjects ev.<stream> in one R3 stream, etcd keys
// ev/<stream>/<seq>.
type system interface {
	// Append writes one event and returns once it is acknowledged.
	Append(ctx context.Context, stream string, payload []byte) error
	// Pipelined writes from one producer for d with up to window events
	// in flight and returns the acknowledged count and per-event latencies.
	Pipelined(ctx context.Context, d time.Duration, window int, payload []byte) (int, []time.Duration, string, error)
	// Load appends n events for replay: chunks of 200 events of one
	// stream, the chunk index modulo every == 0 going to the target stream.
	Load(ctx context.Context, n, every int, payload []byte) error
	// Methods lists the ways the system can replay; d and e try each and
	// report the fastest.
	Methods() []string
	// ReplayAll reads every loaded event from the start with one method;
	// yield gets each payload's length. It returns how it read them.
	ReplayAll(ctx context.Context, method string, want int, yield func(int)) (string, error)
	// ReplayStream reads the target stream's events.
	ReplayStream(ctx context.Context, method string, want int, yield func(int)) (string, error)
	// Leader names the node that orders writes.
	Leader(ctx context.Context) (string, error)
	// LeaderKind says what Leader returns, for the report.
	LeaderKind() string
	// RaftDir says whether a path below a node's data dir is the
	// consensus log rather than the stored data.
	RaftDir(rel string) bool
	Close()
}

const (
	loadChunk    = 200
	targetStream = "target"
)

// loadStream is the stream of the i-th loaded event.
func loadStream(i, every int) string {
	c := i / loadChunk
	if c%every == 0 {
		return targetStream
	}
	return fmt.Sprintf("s%d", c%64)
}

// targetCount is how many of n loaded events belong to the target stream.
func targetCount(n, every int) int {
	t := 0
	for c := 0; c*loadChunk < n; c++ {
		if c%every == 0 {
			t += min(loadChunk, n-c*loadChunk)
		}
	}
	return t
}

// nodes maps node names to their PIDs and data dirs, from
// --nodes n1=PID:DIR,n2=PID:DIR,...
type node struct {
	name string
	pid  int
	dir  string
	// Read from /proc just before a kill, to restart the process.
	cmdline      []string
	cwd, logPath string
}

func parseNodes(s string) ([]node, error) {
	var ns []node
	for _, f := range strings.Split(s, ",") {
		if f == "" {
			continue
		}
		name, rest, ok := strings.Cut(f, "=")
		pid, dir, ok2 := strings.Cut(rest, ":")
		var n node
		if _, err := fmt.Sscan(pid, &n.pid); !ok || !ok2 || err != nil {
			return nil, fmt.Errorf("--nodes: %q is not NAME=PID:DIR", f)
		}
		n.name, n.dir = name, dir
		ns = append(ns, n)
	}
	return ns, nil
}

// diskBytes adds up the apparent sizes of the files under the nodes' data
// dirs, split into consensus log and the rest.
func diskBytes(ns []node, raft func(string) bool) (data, log int64, err error) {
	for _, n := range ns {
		err = filepath.WalkDir(n.dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			fi, err := d.Info()
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(n.dir, p)
			if raft(filepath.ToSlash(rel)) {
				log += fi.Size()
			} else {
				data += fi.Size()
			}
			return nil
		})
		if err != nil {
			return 0, 0, err
		}
	}
	return data, log, nil
}
