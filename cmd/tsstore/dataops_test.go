package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	wal "github.com/hashicorp/raft-wal"
	"google.golang.org/grpc"

	"github.com/tsstore/tsstore/backup"
	"github.com/tsstore/tsstore/fsm"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/segment"
)

// writeTestBackup builds a backup file of a small FSM (40 events at raft
// indexes 1..8) without a cluster.
func writeTestBackup(t *testing.T) (string, backup.Info) {
	t.Helper()
	return writeTestBackupWith(t, nil)
}

// writeTestBackupWith is writeTestBackup with the snapshot stream changed
// by mutate before the file (and its checksum) is written.
func writeTestBackupWith(t *testing.T, mutate func([]byte)) (string, backup.Info) {
	t.Helper()
	p, err := fsm.Open(fsm.DefaultConfig(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for i := range 8 {
		op := fsm.AppendOp{ProducerID: "p", Seq: uint64(5*i + 1)}
		for j := range 5 {
			op.Events = append(op.Events, fsm.Event{Stream: "run/a", Type: "Step", Payload: fmt.Appendf(nil, "%d-%d", i, j)})
		}
		data, err := fsm.Encode(fsm.CmdAppend, &fsm.AppendCommand{Timestamp: int64(1000 + i), Ops: []fsm.AppendOp{op}})
		if err != nil {
			t.Fatal(err)
		}
		if r := p.Apply(uint64(i+1), data); r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	snap, err := p.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var stream bytes.Buffer
	if err := snap.Persist(&stream); err != nil {
		t.Fatal(err)
	}
	info := backup.Info{Cluster: "prod", NodeID: "n1", RaftIndex: 9, RaftTerm: 4, NextOffset: 40,
		SizeBytes: uint64(stream.Len()), CreatedUnixNano: 1}
	var file bytes.Buffer
	w, err := backup.NewWriter(&file, info)
	if err != nil {
		t.Fatal(err)
	}
	if mutate != nil {
		mutate(stream.Bytes())
	}
	w.Write(stream.Bytes())
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "prod.tsbackup")
	if err := os.WriteFile(path, file.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path, info
}

func runCmd(args ...string) (string, string, int) {
	var stdout, stderr bytes.Buffer
	code := run(args, &stdout, &stderr)
	return stdout.String(), stderr.String(), code
}

func TestRestoreCommand(t *testing.T) {
	file, info := writeTestBackup(t)
	peers := "n1=127.0.0.1:7001,n2=127.0.0.1:7002,n3=127.0.0.1:7003"
	b, _ := os.ReadFile(file)
	truncated := filepath.Join(t.TempDir(), "cut.tsbackup")
	os.WriteFile(truncated, b[:len(b)-60], 0o644)
	flipped := filepath.Join(t.TempDir(), "flipped.tsbackup")
	b2 := append([]byte(nil), b...)
	b2[len(b2)/2] ^= 1
	os.WriteFile(flipped, b2, 0o644)
	nonEmpty := t.TempDir()
	os.WriteFile(filepath.Join(nonEmpty, "x"), nil, 0o644)

	refusals := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"missing flags", []string{"--backup", file}, 2, "are required"},
		{"truncated file", []string{"--backup", truncated, "--data-dir", "D", "--node-id", "n1", "--peers", peers}, 1, "truncated"},
		{"altered file", []string{"--backup", flipped, "--data-dir", "D", "--node-id", "n1", "--peers", peers}, 1, "SHA-256 mismatch"},
		{"other cluster", []string{"--backup", file, "--cluster", "staging", "--data-dir", "D", "--node-id", "n1", "--peers", peers}, 1, `the backup is of cluster "prod", not "staging"`},
		{"both cluster flags", []string{"--backup", file, "--cluster", "prod", "--rename-cluster", "x", "--data-dir", "D", "--node-id", "n1", "--peers", peers}, 2, "[cluster rename-cluster] were all set"},
		{"bad peers", []string{"--backup", file, "--data-dir", "D", "--node-id", "n1", "--peers", "n1=127.0.0.1:7001,n2"}, 2, `"n2": want id=host:port`},
		{"self missing", []string{"--backup", file, "--data-dir", "D", "--node-id", "n4", "--peers", peers}, 1, `do not include this node "n4"`},
		{"non-empty dir", []string{"--backup", file, "--data-dir", nonEmpty, "--node-id", "n1", "--peers", peers}, 1, "is not empty"},
	}
	for _, tc := range refusals {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "data")
			args := append([]string{"restore"}, tc.args...)
			for i, a := range args {
				if a == "D" {
					args[i] = dir
				}
			}
			_, stderr, code := runCmd(args...)
			if code != tc.code || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want exit %d saying %q", code, stderr, tc.code, tc.want)
			}
			if _, err := os.Stat(dir); err == nil {
				t.Fatal("a refused restore created the data dir")
			}
		})
	}

	dir := filepath.Join(t.TempDir(), "data")
	stdout, stderr, code := runCmd("restore", "--backup", file, "--rename-cluster", "prod-copy", "--data-dir", dir,
		"--node-id", "n2", "--peers", peers, "--json")
	if code != 0 {
		t.Fatalf("restore: exit %d: %s", code, stderr)
	}
	var res restoreResult
	if err := json.Unmarshal([]byte(stdout), &res); err != nil || res.Cluster != "prod-copy" || res.Info != info || len(res.Peers) != 3 {
		t.Fatalf("restore --json: %v %q", err, stdout)
	}
	id, _ := os.ReadFile(filepath.Join(dir, "node.json"))
	if !strings.Contains(string(id), `"cluster":"prod-copy"`) || !strings.Contains(string(id), `"node_id":"n2"`) {
		t.Fatalf("node.json %s", id)
	}
	// The restored directory verifies clean.
	stdout, stderr, code = runCmd("verify", "--data-dir", dir)
	if code != 0 || !strings.Contains(stdout, "offsets [0, 40), applied raft index 9") || !strings.Contains(stdout, "raft index 9, term 4") {
		t.Fatalf("verify of the restored dir: exit %d\n%s%s", code, stdout, stderr)
	}
}

// restore --dry-run checks a backup end to end and writes nothing: a file
// whose checksum is right but whose snapshot holds a damaged batch (taken
// from a node with a bad segment) is refused, naming the segment.
func TestRestoreDryRun(t *testing.T) {
	good, _ := writeTestBackup(t)
	stdout, stderr, code := runCmd("restore", "--dry-run", "--backup", good)
	if code != 0 || !strings.Contains(stdout, "every batch verified") || !strings.Contains(stdout, "offsets [0, 40)") {
		t.Fatalf("dry run of a good backup: exit %d\n%s%s", code, stdout, stderr)
	}
	bad, _ := writeTestBackupWith(t, func(b []byte) { b[len(b)-20] ^= 0x08 })
	stdout, stderr, code = runCmd("restore", "--dry-run", "--backup", bad)
	if code != 1 || !strings.Contains(stderr, "corruption found") || !strings.Contains(stderr, "00000000000000000000.log") {
		t.Fatalf("dry run of a backup with a damaged batch: exit %d\n%s%s", code, stdout, stderr)
	}
}

func TestDumpCommand(t *testing.T) {
	file, _ := writeTestBackup(t)
	dir := filepath.Join(t.TempDir(), "data")
	if _, stderr, code := runCmd("restore", "--backup", file, "--data-dir", dir, "--node-id", "n1", "--peers", "n1=127.0.0.1:7001"); code != 0 {
		t.Fatal(stderr)
	}
	seg := filepath.Join(dir, "fsm", "log", segment.FileName(0))
	stdout, _, code := runCmd("dump", seg)
	if code != 0 || !strings.Contains(stdout, "summary: 8 batches, 40 records, next offset 40, 0 problems") {
		t.Fatalf("dump: exit %d\n%s", code, stdout)
	}
	stdout, _, code = runCmd("dump", "--json", seg)
	var d segment.LogDump
	if err := json.Unmarshal([]byte(stdout), &d); err != nil || code != 0 || len(d.Batches) != 8 || d.Batches[7].RaftIndex != 8 || d.NextOffset != 40 {
		t.Fatalf("dump --json: exit %d, %v\n%s", code, err, stdout)
	}
	if _, _, code := runCmd("dump"); code != 2 {
		t.Fatalf("dump without a file: exit %d, want 2", code)
	}
}

func TestBackupRefusesExistingFile(t *testing.T) {
	file, _ := writeTestBackup(t)
	before, _ := os.ReadFile(file)
	_, stderr, code := runCmd("backup", "--addr", "127.0.0.1:1", file)
	if code != 1 || !strings.Contains(stderr, "already exists") {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if after, _ := os.ReadFile(file); !bytes.Equal(before, after) {
		t.Fatal("backup touched an existing file")
	}
}

// fakeBackupStream yields chunks, then err (io.EOF for a clean end).
type fakeBackupStream struct {
	grpc.ClientStream
	chunks [][]byte
	err    error
}

func (f *fakeBackupStream) Recv() (*pb.BackupChunk, error) {
	if len(f.chunks) == 0 {
		return nil, f.err
	}
	c := f.chunks[0]
	f.chunks = f.chunks[1:]
	return &pb.BackupChunk{Data: c}, nil
}

// TestWriteBackupPublishesOnlyComplete: a stream that breaks or ends
// short leaves neither FILE nor FILE.tmp; a complete one verifies.
func TestWriteBackupPublishesOnlyComplete(t *testing.T) {
	data := bytes.Repeat([]byte("snapshot-bytes."), 1000)
	info := backup.Info{Cluster: "c", NodeID: "n1", RaftIndex: 5, RaftTerm: 2, NextOffset: 9, SizeBytes: uint64(len(data))}
	chunks := func(b []byte) [][]byte {
		var out [][]byte
		for len(b) > 0 {
			n := min(len(b), 4096)
			out = append(out, b[:n])
			b = b[n:]
		}
		return out
	}
	bar := newProgressBar(&bytes.Buffer{}, "backup")
	for _, tc := range []struct {
		name   string
		stream *fakeBackupStream
		want   string
	}{
		{"broken", &fakeBackupStream{chunks: chunks(data[:8000]), err: errors.New("connection reset")}, "broke after 8000"},
		{"short", &fakeBackupStream{chunks: chunks(data[:8000]), err: io.EOF}, "ended after 8000"},
		{"long", &fakeBackupStream{chunks: chunks(append(append([]byte(nil), data...), 'x')), err: io.EOF}, "longer than"},
	} {
		path := filepath.Join(t.TempDir(), "b.tsbackup")
		_, err := writeBackup(path, info, tc.stream, bar)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("%s: %v, want an error saying %q", tc.name, err, tc.want)
		}
		for _, p := range []string{path, path + ".tmp"} {
			if _, err := os.Stat(p); err == nil {
				t.Fatalf("%s: %s exists after a failed backup", tc.name, p)
			}
		}
	}
	path := filepath.Join(t.TempDir(), "b.tsbackup")
	size, err := writeBackup(path, info, &fakeBackupStream{chunks: chunks(data), err: io.EOF}, bar)
	if err != nil {
		t.Fatal(err)
	}
	f, err := backup.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, _ := io.ReadAll(f.Stream())
	if fi, _ := os.Stat(path); fi.Size() != size || f.Info != info || !bytes.Equal(got, data) {
		t.Fatalf("published backup: size %d (reported %d), info %+v, stream equal %v", fi.Size(), size, f.Info, bytes.Equal(got, data))
	}
	if _, err := os.Stat(path + ".tmp"); err == nil {
		t.Fatal("FILE.tmp left behind")
	}
}

func TestProgressBarOnlyOnATerminal(t *testing.T) {
	var buf bytes.Buffer
	p := newProgressBar(&buf, "backup")
	p.update(50, 100)
	p.finish()
	if buf.Len() != 0 {
		t.Fatalf("progress drawn on a buffer: %q", buf.String())
	}
	// On a terminal: percent, human sizes, rate and ETA.
	p = &progressBar{w: &buf, label: "backup", on: true}
	p.update(0, 4<<20)
	time.Sleep(150 * time.Millisecond) // past the redraw throttle, and a rate to show
	p.update(3<<20, 4<<20)
	p.finish()
	got := buf.String()
	for _, want := range []string{"backup", "75%", "3.0/4.0 MiB", "MiB/s"} {
		if !strings.Contains(got, want) {
			t.Errorf("progress line %q lacks %q", got, want)
		}
	}
	if !regexp.MustCompile(`\[[0-9ms]+:[0-9ms]+\]`).MatchString(got) || !strings.HasSuffix(got, "\n") {
		t.Errorf("progress line %q: want [elapsed:ETA] and a final newline", got)
	}

	// A reader reports what passes through it.
	buf.Reset()
	p = &progressBar{w: &buf, label: "restore", on: true}
	n, err := io.Copy(io.Discard, &progressReader{r: strings.NewReader(strings.Repeat("x", 5000)), bar: p, total: 5000})
	p.finish()
	if err != nil || n != 5000 || !strings.Contains(buf.String(), "100%") {
		t.Errorf("progressReader: %d, %v, %q", n, err, buf.String())
	}
}

// dump of a raft-wal file lists its entries and what their commands hold,
// and exits 1 when a commit's CRC or an event checksum fails.
func TestDumpRaftLogFile(t *testing.T) {
	dir := t.TempDir()
	w, err := wal.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i := uint64(1); i <= 3; i++ {
		op := fsm.AppendOp{ProducerID: "p", Seq: i, Events: []fsm.Event{{Stream: "run/a", Type: "Step", Payload: bytes.Repeat([]byte{'Q'}, 200)}}}
		op.EventSum, op.HasEventSum = fsm.SumEvents(op.Events), true
		data, err := fsm.Encode(fsm.CmdAppend, &fsm.AppendCommand{Timestamp: 1, Ops: []fsm.AppendOp{op}})
		if err != nil {
			t.Fatal(err)
		}
		if err := w.StoreLogs([]*raft.Log{{Index: i, Term: 2, Type: raft.LogCommand, Data: data}}); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	files, _ := filepath.Glob(filepath.Join(dir, "*.wal"))
	if len(files) != 1 {
		t.Fatalf("files %v", files)
	}
	out, stderr, code := runCmd("dump", files[0])
	if code != 0 || strings.Count(out, "append: 1 ops (1 with an event checksum), 1 events") != 3 || !strings.Contains(out, "3 entries; commits: ok") {
		t.Fatalf("dump: exit %d\n%s%s", code, out, stderr)
	}
	b, _ := os.ReadFile(files[0])
	at := bytes.Index(b, bytes.Repeat([]byte{'Q'}, 200)) // the first entry
	b[at+100] ^= 0x02
	os.WriteFile(files[0], b, 0o644)
	out, stderr, code = runCmd("dump", files[0])
	if code != 1 || !strings.Contains(out, "BAD: event checksum mismatch") || !strings.Contains(out, "fails its CRC") {
		t.Fatalf("dump of a flipped byte: exit %d\n%s%s", code, out, stderr)
	}
}
