package segment

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"sync/atomic"
	"testing"

	"github.com/tsstore/tsstore/record"
)

// batchMaker builds deterministic batches. Record i of the log belongs to
// stream "stream-<i mod 7>" and carries that stream's next version, as the
// FSM would assign it.
type batchMaker struct {
	b        record.Builder
	next     uint64
	raft     uint64
	ts       int64
	payload  []byte
	versions [7]uint64
}

func newMaker(payloadSize int) *batchMaker {
	p := make([]byte, payloadSize)
	for i := range p {
		p[i] = byte('a' + i%26)
	}
	return &batchMaker{payload: p, ts: 1_700_000_000_000_000_000}
}

// batch returns a fresh copy of the next batch of n records.
func (m *batchMaker) batch(t testing.TB, n int) record.Batch {
	t.Helper()
	m.raft++
	m.ts += 1000
	m.b.Reset(m.next, m.raft, m.ts, 0)
	for i := range n {
		k := (m.next + uint64(i)) % 7
		m.versions[k]++
		r := record.Record{
			Stream:        fmt.Appendf(nil, "stream-%d", k),
			StreamVersion: m.versions[k],
			Type:          []byte("Created"),
			Payload:       m.payload,
		}
		if err := m.b.Add(&r); err != nil {
			t.Fatal(err)
		}
	}
	b, err := m.b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	m.next = b.Header().NextOffset()
	return bytes.Clone(b)
}

// testOptions are small so that tests roll often.
func testOptions() Options {
	o := DefaultOptions()
	o.SegmentBytes = MinSegmentBytes * 4
	o.IndexIntervalBytes = 512
	return o
}

func mustOpen(t testing.TB, dir string, o Options) *Log {
	t.Helper()
	l, err := Open(dir, o)
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// fill appends n batches of recs records and returns them.
func fill(t testing.TB, l *Log, m *batchMaker, n, recs int) []record.Batch {
	t.Helper()
	var out []record.Batch
	for range n {
		b := m.batch(t, recs)
		if err := l.Append(b); err != nil {
			t.Fatalf("Append(%d): %v", b.Header().BaseOffset, err)
		}
		out = append(out, b)
	}
	return out
}

// splitBatches splits verified concatenated batches.
func splitBatches(t testing.TB, buf []byte) []record.Batch {
	t.Helper()
	var out []record.Batch
	for len(buf) > 0 {
		b, rest, err := record.Next(buf)
		if err != nil {
			t.Fatalf("returned bytes do not verify: %v", err)
		}
		out = append(out, b)
		buf = rest
	}
	return out
}

// faultFS wraps an FS and fails writes or fsyncs of files on demand.
type faultFS struct {
	FS
	failWrite atomic.Bool
	failSync  atomic.Bool
}

var errInjected = errors.New("injected fault")

func (f *faultFS) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	file, err := f.FS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &faultFile{File: file, fs: f}, nil
}

type faultFile struct {
	File
	fs *faultFS
}

func (f *faultFile) Write(p []byte) (int, error) {
	if f.fs.failWrite.Load() {
		// A short write: half the bytes reach the file.
		n, _ := f.File.Write(p[:len(p)/2])
		return n, errInjected
	}
	return f.File.Write(p)
}

func (f *faultFile) Sync() error {
	if f.fs.failSync.Load() {
		return errInjected
	}
	return f.File.Sync()
}
