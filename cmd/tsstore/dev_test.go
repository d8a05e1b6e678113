package main

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/tsstore/tsstore/internal/proccluster"
)

// TestDevCommand runs the real binary's demo, small, on free ports: the
// 8-rank run loses a rank and the leader, the restarted attempt fences the
// zombie of the first, resumes from a snapshot at the step after the last
// complete checkpoint with the full replay's hash, and every node's fold
// from zero agrees.
func TestDevCommand(t *testing.T) {
	dir := t.TempDir()
	bin, err := proccluster.Build("../..", dir)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "dev", "--dir", filepath.Join(dir, "dev"), "--base-port", "0", "--exit",
		"--epochs", "2", "--batches", "40", "--checkpoint-every", "10", "--run-snapshot-batches", "50")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("dev: %v\n%s\n%s", err, stdout.String(), stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{
		"demo trainer: run run/demo-",
		"attempt 1: StartRun -> generation 1\n",
		"  !! step 65 (epoch 2): rank 3 failed (NodeFailed); its 7 peers write on\n",
		"  !! killed leader n",
		"attempt 1 stopped at step 67; ",
		"attempt 2: StartRun -> generation 2 (fences attempt 1)\n",
		"  zombie rank 0 of attempt 1 appends step 68: refused, FailedPrecondition/FENCED: tsstore: run generation fenced: run \"run/demo-",
		"is at generation 2, the append carried 1\n",
		"  last complete checkpoint: step 60 (8 files, sha256 ",
		"; resume at step 61\n",
		"  resumed state == full replay (same hash, same state bytes)\n",
		"attempt 2 finished at step 80: ",
		"all 3 replicas identical\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in the demo's output", want)
		}
	}
	if !regexp.MustCompile(`ResumeRun took [^:]+: from snapshot #\d+ \(covers offset \d+\) \+ \d+ tail events\n`).MatchString(out) {
		t.Errorf("the resume did not start from a snapshot")
	}
	resumed := regexp.MustCompile(`resumed state hash +([0-9a-f]{64}) \((\d+) events\)`).FindStringSubmatch(out)
	full := regexp.MustCompile(`full replay hash +([0-9a-f]{64}) \((\d+) events,`).FindStringSubmatch(out)
	if resumed == nil || full == nil || resumed[1] != full[1] || resumed[2] != full[2] {
		t.Errorf("resumed %q, full replay %q", resumed, full)
	}
	nodes := regexp.MustCompile(`(?m)^  n\d: \d+ events up to offset \d+, hash ([0-9a-f]{64})$`).FindAllStringSubmatch(out, -1)
	if len(nodes) != 3 || nodes[0][1] != nodes[1][1] || nodes[1][1] != nodes[2][1] {
		t.Errorf("per-node folds: %q", nodes)
	}
	if t.Failed() {
		t.Logf("output:\n%s\nstderr:\n%s", out, stderr.String())
	}
}
