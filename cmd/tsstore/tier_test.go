package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tsstore/tsstore/segment"
	"github.com/tsstore/tsstore/server"
	"github.com/tsstore/tsstore/tiering"
)

// flakyTarget refuses uploads while down is set.
type flakyTarget struct {
	tiering.Target
	down atomic.Bool
}

func (f *flakyTarget) Put(ctx context.Context, key string, body io.ReaderAt, size int64, sum uint32) (tiering.ObjectInfo, error) {
	if f.down.Load() {
		return tiering.ObjectInfo{}, errors.New("test: store down")
	}
	return f.Target.Put(ctx, key, body, size, sum)
}

// TestTierStatusCLI: while the store refuses uploads, `tsstore tier
// status` and `tsstore status` show the backlog and every segment local;
// once the store takes them, every sealed segment shows as tiered (only
// in the store, read from there) with its object key.
func TestTierStatusCLI(t *testing.T) {
	fsTarget, err := tiering.NewFSTarget(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	target := &flakyTarget{Target: fsTarget}
	target.down.Store(true)
	tc, _ := startFilled(t, 1, "tier-status", func(c *server.Config) {
		c.Tier = server.TierConfig{Target: target, HotBytes: 1, Interval: 20 * time.Millisecond, MaxBackoff: 40 * time.Millisecond, SweepInterval: time.Hour}
	})
	n := tc.Nodes[0]
	addr := "--addr=" + tc.Addrs[0]
	sealed := len(n.Processor().Retention().Segments)
	if sealed < 2 {
		t.Fatalf("%d sealed segments, want several", sealed)
	}

	out, errOut, code := runCmd("tier", "status", addr)
	backlog := fmt.Sprintf("backlog: %d segments", sealed)
	if code != 0 || !strings.Contains(out, backlog) || strings.Count(out, " local ") != sealed || !strings.Contains(out, "tier target "+fsTarget.String()) {
		t.Fatalf("tier status, store down: exit %d, want %q and %d local rows\n%s%s", code, backlog, sealed, out, errOut)
	}
	out, errOut, code = runCmd("status", addr)
	if code != 0 || !strings.Contains(out, fmt.Sprintf("tier: backlog %d segments", sealed)) {
		t.Fatalf("status, store down: exit %d\n%s%s", code, out, errOut)
	}

	target.down.Store(false)
	type tierJSON struct {
		TierTarget string `json:"tier_target"`
		Backlog    uint64 `json:"tier_backlog_segments"`
		Segments   []struct {
			State     string `json:"state"`
			ObjectKey string `json:"object_key"`
			LocalCopy bool   `json:"local_copy"`
		} `json:"segments"`
	}
	evicted := func(r tierJSON) bool {
		ok := len(r.Segments) == sealed && r.TierTarget != "" && r.Backlog == 0
		for _, s := range r.Segments {
			ok = ok && s.State == "tiered" && !s.LocalCopy && s.ObjectKey != ""
		}
		return ok
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var res tierJSON
		out, errOut, code = runCmd("tier", "status", "--json", addr)
		if err := json.Unmarshal([]byte(out), &res); code != 0 || err != nil {
			t.Fatalf("tier status --json: exit %d, %v\n%s%s", code, err, out, errOut)
		}
		if evicted(res) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("tier status: segments not all tiered and evicted:\n%s", out)
		}
		time.Sleep(20 * time.Millisecond) // uploads and evictions run on the tiering tick
	}
	out, errOut, code = runCmd("tier", "status", addr)
	if code != 0 || !strings.Contains(out, "backlog: 0 segments") {
		t.Fatalf("tier status: exit %d\n%s%s", code, out, errOut)
	}
	for _, e := range n.Processor().Retention().Segments {
		row := ""
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, segment.FileName(e.BaseOffset)) {
				row = line
			}
		}
		if !strings.Contains(row, " tiered ") || !strings.Contains(row, e.Key) {
			t.Fatalf("tier status: segment %d's row %q, want tiered with key %s:\n%s", e.BaseOffset, row, e.Key, out)
		}
	}
	out, _, _ = runCmd("status", addr)
	if !strings.Contains(out, fmt.Sprintf("%d segments read from the tier target", sealed)) {
		t.Fatalf("status after eviction:\n%s", out)
	}
}
