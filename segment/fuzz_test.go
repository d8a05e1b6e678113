package segment

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/tsstore/tsstore/record"
)

// fuzzSeed returns a small valid log file.
func fuzzSeed(t testing.TB) []byte {
	m := newMaker(20)
	var buf []byte
	for i := range 4 {
		buf = append(buf, m.batch(t, 1+i)...)
	}
	return buf
}

// FuzzOpen writes random bytes as a segment file and opens the log. Open
// must never panic; if it succeeds, every stored batch must verify, reads
// must return exactly the stored bytes, and appending must work.
//
// sealed=true stores the bytes as a sealed segment without index files,
// followed by an empty active segment, which exercises the index rebuild
// and the refuse-on-corruption path instead of the truncation path.
func FuzzOpen(f *testing.F) {
	seed := fuzzSeed(f)
	f.Add(seed, false)
	f.Add(seed, true)
	f.Add(seed[:len(seed)-7], false)
	f.Add(seed[:len(seed)-7], true)
	flipped := bytes.Clone(seed)
	flipped[len(flipped)/2] ^= 4
	f.Add(flipped, false)
	f.Add(flipped, true)
	f.Add(append(bytes.Clone(seed), 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 40), false)
	f.Add([]byte{}, false)
	f.Add(make([]byte, 100), true)
	f.Fuzz(func(t *testing.T, data []byte, sealed bool) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, FileName(0)), data, 0o644); err != nil {
			t.Fatal(err)
		}
		if sealed {
			var next uint64
			for rest := data; ; {
				b, r, err := record.Next(rest)
				if err != nil || b == nil {
					break
				}
				next, rest = b.Header().NextOffset(), r
			}
			if next == 0 {
				next = 1 << 40
			}
			if err := os.WriteFile(filepath.Join(dir, FileName(next)), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		o := DefaultOptions()
		o.IndexIntervalBytes = 64
		l, err := Open(dir, o)
		if err != nil {
			if sealed && !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Open failed without corruption: %v", err)
			}
			return
		}
		defer l.Close()
		if err := l.Verify(nil); err != nil {
			t.Fatalf("Verify after Open: %v", err)
		}
		out, next, err := l.ReadBatches(nil, 0, 1<<30)
		if err != nil {
			t.Fatalf("ReadBatches: %v", err)
		}
		if next != l.NextOffset() || !bytes.HasPrefix(data, out) {
			t.Fatalf("ReadBatches returned %d bytes up to %d, log ends at %d", len(out), next, l.NextOffset())
		}
		var b record.Builder
		last, ok := l.LastHeader()
		b.Reset(l.NextOffset(), last.RaftIndex+1, max(last.Timestamp, 0), 0)
		b.Add(&record.Record{Payload: []byte("x")})
		nb, _ := b.Finish()
		if err := l.Append(nb); err != nil && !(ok && last.NextOffset() == 0) {
			t.Fatalf("Append after Open: %v", err)
		}
	})
}
