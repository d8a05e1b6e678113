package main

import (
	"bufio"
	"strings"
	"testing"

	"github.com/tsstore/tsstore/client"
	"github.com/tsstore/tsstore/client/train"
)

// `tsstore runs` lists runs (not plain streams) with their index entry
// and the newest snapshot's summary.
func TestRunsCommand(t *testing.T) {
	rc := startRunCluster(t)
	rc.writeTestRun(t, "bert-7")
	if _, err := rc.cl.StartRun(rc.ctx, "bert-8", "no events yet"); err != nil {
		t.Fatal(err)
	}
	if _, err := rc.cl.Append(rc.ctx, client.Event{Stream: "bert-plain", Type: "Note", Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	full := rc.fold(t, "bert-7", train.Target{})
	code, out, errOut := rc.tsstore("runs", "--prefix", "bert")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 3 || !strings.HasPrefix(lines[0], "RUN ") ||
		!strings.HasPrefix(lines[1], "bert-7 ") || !strings.Contains(lines[1], " 6          | running  60    3      NaN   40") ||
		!strings.HasPrefix(lines[2], "bert-8 ") || !strings.Contains(lines[2], "| -  ") ||
		!strings.Contains(errOut, "as of each run's newest snapshot") {
		t.Fatalf("runs: exit %d, %q\n%s", code, errOut, out)
	}
	code, out, errOut = rc.tsstore("runs", "--json")
	type summary struct {
		Run            string `json:"run"`
		Generation     uint64 `json:"generation"`
		Events         uint64 `json:"events"`
		LastOffset     uint64 `json:"last_offset"`
		SnapshotsTaken uint64 `json:"snapshots_taken"`
		Snapshot       *struct {
			Seq                uint64  `json:"seq"`
			Status             string  `json:"status"`
			Step               uint64  `json:"step"`
			Epoch              uint64  `json:"epoch"`
			Loss               any     `json:"loss"`
			LastCheckpointStep *uint64 `json:"last_checkpoint_step"`
		} `json:"snapshot"`
	}
	var got []summary
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var j summary
		decodeJSON(t, sc.Text(), &j)
		got = append(got, j)
	}
	if code != 0 || len(got) != 2 {
		t.Fatalf("runs --json: exit %d, %q\n%s", code, errOut, out)
	}
	b7, b8 := got[0], got[1]
	s := b7.Snapshot
	if b7.Run != "bert-7" || b7.Generation != 1 || b7.Events != full.Events || b7.LastOffset != full.LastOffset || b7.SnapshotsTaken != 6 ||
		s == nil || s.Seq != 6 || s.Status != "running" || s.Step != 60 || s.Epoch != 3 || s.LastCheckpointStep == nil || *s.LastCheckpointStep != 40 ||
		s.Loss != "NaN" || b8.Run != "bert-8" || b8.Generation != 1 || b8.Events != 1 || b8.Snapshot != nil {
		t.Fatalf("runs --json:\n%s", out)
	}
	if code, out, errOut := rc.tsstore("runs", "--prefix", "nope"); code != 0 || !strings.HasPrefix(out, "RUN ") || strings.Count(out, "\n") != 1 || errOut != "no runs\n" {
		t.Fatalf("no runs: exit %d, %q %q", code, out, errOut)
	}
	if code, _, _ := rc.tsstore("runs", "bert-7"); code != 2 {
		t.Fatalf("runs with an argument: exit %d, want 2", code)
	}
}
