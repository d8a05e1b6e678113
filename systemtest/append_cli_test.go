package systemtest

import (
	"encoding/json"
	"strings"
	"testing"
)

// `tsstore append` without --producer leaves no producer behind: the
// event is stored without a producer id (so the server keeps no dedup
// state for it); with --producer the id is stored.
func TestAppendCLILeavesNoProducer(t *testing.T) {
	c := startCluster(t)
	addrs := strings.Join(c.APIAddrs(), ",")
	for _, args := range [][]string{
		{"append", "--addr", addrs, "--stream", "ops/notes", "--type", "Note", "--data", `{"n":1}`},
		{"append", "--addr", addrs, "--stream", "ops/notes", "--type", "Note", "--data", `{"n":2}`, "--producer", "op-1"},
	} {
		if out, errOut, code := runCLI(t, args...); code != 0 {
			t.Fatalf("%v: exit %d: %s %s", args, code, out, errOut)
		}
	}
	out, errOut, code := runCLI(t, "read", "--addr", addrs, "--stream", "ops/notes", "--json")
	if code != 0 {
		t.Fatalf("read: exit %d: %s", code, errOut)
	}
	var producers []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var ev struct {
			ProducerID string `json:"producer_id"`
		}
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		producers = append(producers, ev.ProducerID)
	}
	if len(producers) != 2 || producers[0] != "" || producers[1] != "op-1" {
		t.Fatalf("producer ids %q, want none for the first append and op-1 for the second", producers)
	}
}
