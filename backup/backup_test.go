package backup

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func testInfo(size int) Info {
	return Info{Cluster: "prod", NodeID: "n2", RaftIndex: 1234, RaftTerm: 7, NextOffset: 99,
		SizeBytes: uint64(size), CreatedUnixNano: 1_700_000_000_000_000_000}
}

func build(t testing.TB, info Info, stream []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := NewWriter(&buf, info)
	if err != nil {
		t.Fatal(err)
	}
	// Write in uneven pieces, as a gRPC stream delivers them.
	for rest := stream; len(rest) > 0; {
		n := min(len(rest), 7)
		if _, err := w.Write(rest[:n]); err != nil {
			t.Fatal(err)
		}
		rest = rest[n:]
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func verifyBytes(b []byte) (Info, int64, error) {
	return Verify(bytes.NewReader(b), int64(len(b)), nil)
}

func TestRoundTrip(t *testing.T) {
	stream := []byte("TSSNAP01 pretend snapshot stream bytes")
	info := testInfo(len(stream))
	b := build(t, info, stream)
	path := filepath.Join(t.TempDir(), "b.tsbackup")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	var calls int
	f, err := Open(path, func(done, total int64) { calls++ })
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Info != info {
		t.Fatalf("info %+v, want %+v", f.Info, info)
	}
	got, err := io.ReadAll(f.Stream())
	if err != nil || !bytes.Equal(got, stream) {
		t.Fatalf("stream %q, %v; want %q", got, err, stream)
	}
	if calls < 2 {
		t.Fatalf("progress called %d times, want at least start and end", calls)
	}
	if len(b) != PrefixSize+len(mustJSON(t, info))+len(stream)+TrailerSize {
		t.Fatalf("file is %d bytes, not the size the format fixes", len(b))
	}
}

func mustJSON(t *testing.T, info Info) []byte {
	b := build(t, info, make([]byte, info.SizeBytes))
	n := binary.BigEndian.Uint32(b[12:16])
	return b[16 : 16+n]
}

// TestTruncatedAnywhere cuts the file at every length: each must be
// refused as corrupt, whichever section the cut falls in.
func TestTruncatedAnywhere(t *testing.T) {
	stream := bytes.Repeat([]byte("0123456789"), 30)
	b := build(t, testInfo(len(stream)), stream)
	for n := range len(b) {
		if _, _, err := verifyBytes(b[:n]); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("truncated to %d of %d bytes: err %v, want ErrCorrupt", n, len(b), err)
		}
	}
	if _, _, err := verifyBytes(append(append([]byte(nil), b...), 0)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("one byte appended: err %v, want ErrCorrupt", err)
	}
}

// TestFlippedByteAnywhere flips one bit in every byte in turn.
func TestFlippedByteAnywhere(t *testing.T) {
	stream := bytes.Repeat([]byte("abcdefgh"), 20)
	b := build(t, testInfo(len(stream)), stream)
	for i := range b {
		c := append([]byte(nil), b...)
		c[i] ^= 0x10
		if _, _, err := verifyBytes(c); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("bit flipped at byte %d of %d: err %v, want ErrCorrupt", i, len(b), err)
		}
	}
}

func TestRefusalMessages(t *testing.T) {
	stream := []byte("stream")
	b := build(t, testInfo(len(stream)), stream)
	n := int(binary.BigEndian.Uint32(b[12:16]))
	cases := []struct {
		name string
		edit func([]byte) []byte
		want string
	}{
		{"wrong magic", func(c []byte) []byte { copy(c, "TSSNAP01"); return c }, "not a tsstore backup"},
		{"newer version", func(c []byte) []byte { binary.BigEndian.PutUint32(c[8:12], 2); return c }, "version 2"},
		{"truncated stream", func(c []byte) []byte { return append(c[:16+n+2], c[len(c)-TrailerSize:]...) }, "trailer says"},
		{"cut in the trailer", func(c []byte) []byte { return c[:len(c)-5] }, "no trailer"},
		{"altered stream", func(c []byte) []byte { c[16+n] ^= 1; return c }, "SHA-256 mismatch"},
		{"huge info length", func(c []byte) []byte { binary.BigEndian.PutUint32(c[12:16], 1<<30); return c }, "info length"},
		{"empty", func(c []byte) []byte { return nil }, "shorter than"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := verifyBytes(tc.edit(append([]byte(nil), b...)))
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want ErrCorrupt saying %q", err, tc.want)
			}
		})
	}
}

func TestWriterRefusesWrongLength(t *testing.T) {
	var buf bytes.Buffer
	w, err := NewWriter(&buf, testInfo(4))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("12345")); err == nil {
		t.Fatal("Write past the announced size succeeded")
	}
	w.Write([]byte("12"))
	before := buf.Len()
	if err := w.Close(); err == nil || !strings.Contains(err.Error(), "2 of 4") {
		t.Fatalf("Close of a short stream: %v, want an error naming 2 of 4 bytes", err)
	}
	if buf.Len() != before {
		t.Fatal("Close of a short stream wrote a trailer")
	}
	if _, err := NewWriter(&buf, Info{RaftIndex: 1, SizeBytes: 1}); err == nil {
		t.Fatal("NewWriter accepted an info without a cluster")
	}
}

func FuzzVerify(f *testing.F) {
	f.Add(build(f, testInfo(3), []byte("abc")))
	f.Add([]byte(Magic))
	f.Fuzz(func(t *testing.T, b []byte) {
		info, off, err := verifyBytes(b)
		if err != nil {
			return
		}
		if off+int64(info.SizeBytes)+TrailerSize != int64(len(b)) {
			t.Fatalf("accepted a file whose sections do not add up: %+v at %d, %d bytes", info, off, len(b))
		}
	})
}
