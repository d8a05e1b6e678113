package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tsstore/tsstore/client"
	"github.com/tsstore/tsstore/segment"
	"github.com/tsstore/tsstore/server"
	"github.com/tsstore/tsstore/tiering"
)

// TestBackupRestoreTieredCLI: with most of the log tiered (to a
// directory target), `tsstore backup` writes a small file that
// references the objects and `backup --include-tiered` a self-contained
// one; `restore --dry-run` checks the referenced objects with
// --tier-dir (exit 1 naming a deleted one) and says without it that it
// cannot check them, naming the keys; restore seeds a node from either.
func TestBackupRestoreTieredCLI(t *testing.T) {
	tierDir := t.TempDir()
	target, err := tiering.NewFSTarget(tierDir)
	if err != nil {
		t.Fatal(err)
	}
	cfg := server.DefaultConfig()
	cfg.NodeID, cfg.DataDir, cfg.RaftAddr, cfg.APIAddr = "n1", t.TempDir(), freeAddr(t), freeAddr(t)
	cfg.HeartbeatTimeout, cfg.ElectionTimeout, cfg.LeaderLeaseTimeout = 200*time.Millisecond, 200*time.Millisecond, 100*time.Millisecond
	cfg.Segment.SegmentBytes = 64 << 10
	cfg.MinFreeBytes = 0
	cfg.Bootstrap = []server.Peer{{ID: "n1", RaftAddr: cfg.RaftAddr}}
	cfg.Tier = server.TierConfig{Target: target, HotBytes: 1, Interval: 20 * time.Millisecond, MaxBackoff: 40 * time.Millisecond, SweepInterval: time.Hour}
	n, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	cl, err := client.New(client.DefaultConfig(n.APIAddr()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := cl.NewProducer("tiered-backup")
	for i := range 40 {
		var evs []client.Event
		for range 10 {
			evs = append(evs, client.Event{Stream: "run/r", Type: "Step", Payload: []byte(strings.Repeat("x", 400))})
		}
		if _, err := p.Append(ctx, evs...); err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
	}
	// Wait until every sealed segment is tiered and evicted.
	deadline := time.Now().Add(30 * time.Second)
	for {
		tiered := 0
		_ = n.Processor().WithLog(func(l *segment.Log) error {
			for _, s := range l.Segments() {
				if s.Tiered {
					tiered++
				}
			}
			return nil
		})
		if sealed := len(n.Processor().Retention().Segments); sealed >= 2 && tiered == sealed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d sealed segments evicted after 30 s", tiered, len(n.Processor().Retention().Segments))
		}
		time.Sleep(20 * time.Millisecond) // the tiering tick; nothing to wait on
	}
	segs := n.Processor().Retention().Segments
	addr := "--addr=" + n.APIAddr()

	ref := filepath.Join(t.TempDir(), "ref.tsbackup")
	full := filepath.Join(t.TempDir(), "full.tsbackup")
	if out, errOut, code := runCmd("backup", addr, ref); code != 0 {
		t.Fatalf("backup: exit %d\n%s%s", code, out, errOut)
	}
	if out, errOut, code := runCmd("backup", addr, "--include-tiered", full); code != 0 {
		t.Fatalf("backup --include-tiered: exit %d\n%s%s", code, out, errOut)
	}
	rfi, _ := os.Stat(ref)
	ffi, _ := os.Stat(full)
	var tieredBytes int64
	for _, e := range segs {
		tieredBytes += e.Size
	}
	t.Logf("%d bytes tiered: backup %d bytes, backup --include-tiered %d bytes", tieredBytes, rfi.Size(), ffi.Size())
	if ffi.Size()-rfi.Size() < tieredBytes*9/10 || ffi.Size() < tieredBytes {
		t.Fatalf("backup %d bytes, --include-tiered %d bytes; %d bytes are tiered", rfi.Size(), ffi.Size(), tieredBytes)
	}

	out, errOut, code := runCmd("restore", "--dry-run", "--backup", ref)
	if code != 0 || !strings.Contains(out, "NOT checked") || !strings.Contains(out, segs[0].Key) {
		t.Fatalf("dry run without a target: exit %d\n%s%s", code, out, errOut)
	}
	out, errOut, code = runCmd("restore", "--dry-run", "--backup", ref, "--tier-dir", tierDir)
	if code != 0 || !strings.Contains(out, "each present") {
		t.Fatalf("dry run with the target: exit %d\n%s%s", code, out, errOut)
	}
	out, errOut, code = runCmd("restore", "--dry-run", "--backup", full)
	if code != 0 || strings.Contains(out, "tiered") {
		t.Fatalf("dry run of the include-tiered backup: exit %d\n%s%s", code, out, errOut)
	}
	for name, file := range map[string]string{"ref": ref, "full": full} {
		dir := filepath.Join(t.TempDir(), name)
		if out, errOut, code := runCmd("restore", "--backup", file, "--data-dir", dir, "--node-id", "n1", "--peers", "n1=127.0.0.1:7001", "--tier-dir", tierDir); code != 0 {
			t.Fatalf("restore %s: exit %d\n%s%s", name, code, out, errOut)
		}
		markers, _ := filepath.Glob(filepath.Join(dir, "fsm", "log", "*"+segment.TieredSuffix))
		if want := map[string]int{"ref": len(segs), "full": 0}[name]; len(markers) != want {
			t.Fatalf("restore %s: %d markers, want %d", name, len(markers), want)
		}
	}

	// A referenced object deleted: the dry run with the target fails
	// naming it, restore refuses.
	if err := target.Delete(context.Background(), segs[0].Key); err != nil {
		t.Fatal(err)
	}
	out, errOut, code = runCmd("restore", "--dry-run", "--backup", ref, "--tier-dir", tierDir)
	if code != 1 || !strings.Contains(out, segs[0].Key+": BAD: missing") {
		t.Fatalf("dry run with a deleted object: exit %d\n%s%s", code, out, errOut)
	}
	if _, errOut, code := runCmd("restore", "--backup", ref, "--data-dir", filepath.Join(t.TempDir(), "x"), "--node-id", "n1", "--peers", "n1=127.0.0.1:7001", "--tier-dir", tierDir); code == 0 || !strings.Contains(errOut, "missing or differ") {
		t.Fatalf("restore with a deleted object: exit %d\n%s", code, errOut)
	}
}
