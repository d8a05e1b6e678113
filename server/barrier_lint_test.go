package server

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestOneBarrierPerTerm: localReadIndex takes the term's barrier
// (watchLeadership) for the last log entry that never reaches the FSM.
// Any other raft.Barrier breaks that: its entry is never applied, so a
// follower's linearizable read of an idle cluster waits for it and fails
// (the tier sweep took one; `tsstore bench --workloads t` found it).
func TestOneBarrierPerTerm(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if k := strings.Count(string(b), ".Barrier("); k > 0 {
			if name != "cluster.go" {
				t.Errorf("%s calls raft's Barrier; only watchLeadership (cluster.go) may", name)
			}
			calls += k
		}
	}
	if calls != 1 {
		t.Fatalf("%d Barrier calls, want watchLeadership's one", calls)
	}
}
