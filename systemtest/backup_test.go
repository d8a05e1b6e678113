package systemtest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tsstore/tsstore/client"
	"github.com/tsstore/tsstore/internal/proccluster"
)

// runCLI runs the tsstore binary and returns its stdout, stderr and exit
// code.
func runCLI(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary(t), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return stdout.String(), stderr.String(), 0
	case errors.As(err, &ee):
		return stdout.String(), stderr.String(), ee.ExitCode()
	}
	t.Fatalf("tsstore %s: %v", strings.Join(args, " "), err)
	return "", "", -1
}

// backupInfo is the part of `tsstore backup --json` the test reads.
type backupInfo struct {
	File string `json:"file"`
	Info struct {
		Cluster    string `json:"cluster"`
		NodeID     string `json:"node_id"`
		RaftIndex  uint64 `json:"raft_index"`
		RaftTerm   uint64 `json:"raft_term"`
		NextOffset uint64 `json:"next_offset"`
		SizeBytes  uint64 `json:"size_bytes"`
	} `json:"info"`
}

// TestBackupRestoreIntoNewCluster backs up a live three-node cluster with
// producers appending, restores the backup into a new three-node cluster
// (new directories, new ports), and checks the new cluster's log equals
// the source's up to the cut byte for byte, then takes new appends from
// the backup's next offset on, readable from every node.
func TestBackupRestoreIntoNewCluster(t *testing.T) {
	src := startCluster(t, "--segment-bytes", "262144", "--snapshot-threshold", "200", "--snapshot-interval", "300ms", "--trailing-logs", "50")
	cl := newClient(t, src.APIAddrs())

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var maxAcked uint64
	for p := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			prod := cl.NewProducer(fmt.Sprintf("producer-%d", p))
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				res, err := prod.Append(ctx, client.Event{Stream: fmt.Sprintf("run/p%d", p), Type: "BatchCompleted",
					Payload: fmt.Appendf(nil, "p%d-%d-%s", p, i, strings.Repeat("x", 150))})
				if err != nil {
					t.Errorf("producer %d: %v", p, err)
					return
				}
				mu.Lock()
				maxAcked = max(maxAcked, res.LastOffset)
				mu.Unlock()
			}
		}()
	}
	stopLoad := func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}
	defer stopLoad()
	waitCaughtUp(t, src, 1500)

	file := filepath.Join(t.TempDir(), "src.tsbackup")
	out, errOut, code := runCLI(t, "backup", "--addr", src.Nodes[1].APIAddr, "--json", file)
	if code != 0 {
		t.Fatalf("backup exit %d: %s %s", code, out, errOut)
	}
	if errOut != "" {
		t.Fatalf("backup wrote to a non-terminal stderr: %q", errOut)
	}
	var bi backupInfo
	if err := json.Unmarshal([]byte(out), &bi); err != nil {
		t.Fatalf("backup --json: %v: %q", err, out)
	}
	info := bi.Info
	if info.NextOffset < 1500 || info.RaftIndex == 0 || info.Cluster != "tsstore" || info.NodeID != src.Nodes[1].ID {
		t.Fatalf("backup info %+v", info)
	}
	// The load goes on past the cut, then stops.
	waitCaughtUp(t, src, info.NextOffset+200)
	stopLoad()
	if t.Failed() {
		return
	}
	if maxAcked < info.NextOffset {
		t.Fatalf("appends acknowledged up to %d only, the backup cut at %d", maxAcked, info.NextOffset)
	}
	want := readRaw(t, src.Nodes[0].APIAddr, info.NextOffset)
	if uint64(len(want.records)) != info.NextOffset {
		t.Fatalf("source holds %d records below the cut %d", len(want.records), info.NextOffset)
	}
	src.Close()

	// The new cluster: new directories and ports, restored node by node.
	dst, err := proccluster.New(proccluster.Options{Binary: binary(t), Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		dst.Close()
		if t.Failed() {
			var b strings.Builder
			dst.TailLogs(&b, 40)
			t.Log(b.String())
		}
	})
	var peers []string
	for _, n := range dst.Nodes {
		peers = append(peers, n.ID+"="+n.RaftAddr)
	}
	for _, n := range dst.Nodes {
		out, errOut, code := runCLI(t, "restore", "--backup", file, "--data-dir", n.DataDir, "--node-id", n.ID,
			"--peers", strings.Join(peers, ","), "--cluster", "tsstore")
		if code != 0 {
			t.Fatalf("restore %s exit %d: %s %s", n.ID, code, out, errOut)
		}
	}
	if err := dst.Start(); err != nil {
		t.Fatal(err)
	}
	waitLeader(t, dst)
	for _, n := range dst.Nodes {
		st, err := n.Status(ctx)
		if err != nil || st.NextOffset != info.NextOffset || st.AppliedIndex < info.RaftIndex {
			t.Fatalf("restored %s: status %v, %v; want next offset %d", n.ID, st, err, info.NextOffset)
		}
		got := readRaw(t, n.APIAddr, info.NextOffset)
		if got.hash != want.hash || len(got.records) != len(want.records) {
			t.Fatalf("restored %s: log %s (%d records) differs from the source's %s (%d records) up to the cut",
				n.ID, got.hash, len(got.records), want.hash, len(want.records))
		}
		for i, r := range got.records {
			if r.Offset != uint64(i) || !bytes.Equal(r.Payload, want.records[i].Payload) || r.ProducerSeq != want.records[i].ProducerSeq {
				t.Fatalf("restored %s: record %d differs", n.ID, i)
			}
		}
	}

	// New appends continue from the cut, on every node.
	cl2 := newClient(t, dst.APIAddrs())
	prod := cl2.NewProducer("after-restore")
	var evs []client.Event
	for i := range 10 {
		evs = append(evs, client.Event{Stream: "run/after", Type: "Resumed", Payload: fmt.Appendf(nil, "after-%d", i)})
	}
	res, err := prod.Append(ctx, evs...)
	if err != nil {
		t.Fatal(err)
	}
	if res.FirstOffset != info.NextOffset || res.LastOffset != info.NextOffset+9 || res.RaftIndex <= info.RaftIndex {
		t.Fatalf("first append after the restore: %+v; want offsets from %d at a raft index above %d", res, info.NextOffset, info.RaftIndex)
	}
	end := info.NextOffset + 10
	waitCaughtUp(t, dst, end)
	for _, n := range dst.Nodes {
		got := readRaw(t, n.APIAddr, end)
		if len(got.records) != int(end) || got.hash == "" {
			t.Fatalf("%s holds %d records, want %d", n.ID, len(got.records), end)
		}
		for i := range 10 {
			r := got.records[int(info.NextOffset)+i]
			if r.Offset != info.NextOffset+uint64(i) || string(r.Payload) != fmt.Sprintf("after-%d", i) {
				t.Fatalf("%s: offset %d holds %q", n.ID, r.Offset, r.Payload)
			}
		}
	}
}

// copyDir copies a directory tree by content (hard links in the snapshot
// store become independent files, so flipping a byte in the copy leaves
// the original alone).
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		in, err := os.Open(path)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.Create(target)
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, in); err != nil {
			out.Close()
			return err
		}
		return out.Close()
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestVerifyNamesCorruptSegment: verify passes on a stopped node's data
// directory and exits 1 naming the file and position once a byte of a
// segment (in a copy) is flipped.
func TestVerifyNamesCorruptSegment(t *testing.T) {
	c := startCluster(t, "--segment-bytes", "65536")
	cl := newClient(t, c.APIAddrs())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := cl.NewProducer("verify")
	for i := range 60 {
		var evs []client.Event
		for j := range 10 {
			evs = append(evs, client.Event{Stream: "run/v", Type: "Step", Payload: fmt.Appendf(nil, "%d-%d-%s", i, j, strings.Repeat("v", 200))})
		}
		if _, err := p.Append(ctx, evs...); err != nil {
			t.Fatal(err)
		}
	}
	waitCaughtUp(t, c, 600)
	if _, _, code := runCLI(t, "snapshot", "--addr", c.Nodes[2].APIAddr); code != 0 {
		t.Fatal("snapshot failed")
	}
	n := c.Nodes[2]
	// A running node's directory is refused.
	if out, errOut, code := runCLI(t, "verify", "--data-dir", n.DataDir); code != 1 || !strings.Contains(out+errOut, "a node is running") {
		t.Fatalf("verify of a running node: exit %d: %s %s", code, out, errOut)
	}
	if err := n.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := runCLI(t, "verify", "--data-dir", n.DataDir)
	if code != 0 || !strings.Contains(out, ": ok") {
		t.Fatalf("verify of a clean directory: exit %d: %s %s", code, out, errOut)
	}
	bad := filepath.Join(t.TempDir(), "bad")
	copyDir(t, n.DataDir, bad)
	seg := filepath.Join(bad, "fsm", "log", "00000000000000000000.log")
	b, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	// The first batch's header is 44 bytes; byte 5000 is inside some
	// batch's records, covered by its CRC.
	b[5000] ^= 0x01
	if err := os.WriteFile(seg, b, 0o644); err != nil {
		t.Fatal(err)
	}
	out, errOut, code = runCLI(t, "verify", "--data-dir", bad)
	if code != 1 || !strings.Contains(out, "CORRUPT: "+seg+" at position ") || !strings.Contains(errOut, "corruption found") {
		t.Fatalf("verify of a flipped byte: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	out, _, code = runCLI(t, "verify", "--json", "--data-dir", bad)
	var res struct {
		OK         bool `json:"ok"`
		Corruption struct {
			Path     string
			Position int64
			Offset   uint64
		} `json:"corruption"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || code != 1 || res.OK || res.Corruption.Path != seg ||
		res.Corruption.Position <= 0 || res.Corruption.Position > 5000 {
		t.Fatalf("verify --json: exit %d, %v: %s", code, err, out)
	}
	// A flipped byte in the active (last) segment: a node start would cut
	// the segment there, verify reports it as corruption instead.
	bad2 := filepath.Join(t.TempDir(), "bad2")
	copyDir(t, n.DataDir, bad2)
	logs, _ := filepath.Glob(filepath.Join(bad2, "fsm", "log", "*.log"))
	active := logs[len(logs)-1]
	if active == filepath.Join(bad2, "fsm", "log", "00000000000000000000.log") {
		t.Fatalf("only one segment: %v", logs)
	}
	ab, err := os.ReadFile(active)
	if err != nil || len(ab) < 1000 {
		t.Fatalf("active segment %s: %d bytes, %v", active, len(ab), err)
	}
	ab[len(ab)/2] ^= 0x01
	os.WriteFile(active, ab, 0o644)
	out2, errOut2, code2 := runCLI(t, "verify", "--data-dir", bad2)
	if code2 != 1 || !strings.Contains(out2, "CORRUPT: "+active+" at position ") || !strings.Contains(out2, "active segment") {
		t.Fatalf("verify of a flipped byte in the active segment: exit %d\nstdout: %s\nstderr: %s", code2, out2, errOut2)
	}
	if after, _ := os.ReadFile(active); !bytes.Equal(after, ab) {
		t.Fatal("verify changed the active segment")
	}

	// A flipped byte in the Raft log (raft-wal checks its CRCs only to
	// find a torn tail) is found too.
	bad3 := filepath.Join(t.TempDir(), "bad3")
	copyDir(t, n.DataDir, bad3)
	wals, _ := filepath.Glob(filepath.Join(bad3, "raft", "wal", "*.wal"))
	if len(wals) == 0 {
		t.Fatal("no raft-wal segment files")
	}
	wb, err := os.ReadFile(wals[0])
	if err != nil || len(wb) < 40000 {
		t.Fatalf("%s: %d bytes, %v", wals[0], len(wb), err)
	}
	wb[20000] ^= 0x01
	os.WriteFile(wals[0], wb, 0o644)
	out3, errOut3, code3 := runCLI(t, "verify", "--data-dir", bad3)
	if code3 != 1 || !strings.Contains(out3, "raft log damaged") {
		t.Fatalf("verify of a flipped byte in the raft log: exit %d\nstdout: %s\nstderr: %s", code3, out3, errOut3)
	}

	// dump shows the bad batch at that position, and exits 1 as verify does.
	out, _, code = runCLI(t, "dump", seg)
	if code != 1 || !strings.Contains(out, fmt.Sprintf("%10d", res.Corruption.Position)) || !strings.Contains(out, " BAD") {
		t.Fatalf("dump: exit %d: %s", code, out)
	}
}
