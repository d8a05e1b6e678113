package fsm

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"

	"github.com/tsstore/tsstore/segment"
)

func snapshotStream(t *testing.T) []byte {
	t.Helper()
	cfg := DefaultConfig(t.TempDir())
	cfg.Segment.SegmentBytes = 8 << 10
	p, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	for i := range uint64(40) {
		mustApply(t, p, i+1, appendEntry(t, int64(i), op("p", 20*i+1, "run/a", 20)))
	}
	s, err := p.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := s.Persist(&buf); err != nil {
		t.Fatal(err)
	}
	if len(s.header.Segments) < 2 {
		t.Fatalf("want several segments, got %d", len(s.header.Segments))
	}
	return buf.Bytes()
}

// The verifier passes a good stream through unchanged, in reads of any
// size, and stops at the first damaged batch or a short stream.
func TestVerifySnapshotStream(t *testing.T) {
	good := snapshotStream(t)
	for _, r := range []io.Reader{bytes.NewReader(good), iotest.OneByteReader(bytes.NewReader(good)), iotest.HalfReader(bytes.NewReader(good))} {
		got, err := io.ReadAll(VerifySnapshotStream(r))
		if err != nil || !bytes.Equal(got, good) {
			t.Fatalf("good stream: %v, %d of %d bytes", err, len(got), len(good))
		}
	}
	bad := bytes.Clone(good)
	bad[len(bad)-300] ^= 0x04 // in the last segment's batches
	_, err := io.ReadAll(VerifySnapshotStream(bytes.NewReader(bad)))
	var ce *segment.CorruptionError
	if !errors.As(err, &ce) || ce.Path == "" {
		t.Fatalf("flipped byte: %v", err)
	}
	t.Logf("flipped byte: %v", err)
	_, err = io.ReadAll(VerifySnapshotStream(bytes.NewReader(good[:len(good)-10])))
	if !errors.Is(err, ErrBadSnapshot) {
		t.Fatalf("short stream: %v", err)
	}
	_, err = io.ReadAll(VerifySnapshotStream(bytes.NewReader(append(bytes.Clone(good), 1, 2, 3))))
	if !errors.Is(err, ErrBadSnapshot) {
		t.Fatalf("trailing bytes: %v", err)
	}
}
