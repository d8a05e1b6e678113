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

// FuzzStreamsFile feeds random bytes to the .streams decoders: the full
// decoder (Verify, Dump) and the lazy one readers use (header and
// directory at Open, entry blocks on demand). Neither may panic; a file
// the full decoder accepts must re-encode to the same bytes, and the lazy
// reader must then return the same entries.
func FuzzStreamsFile(f *testing.F) {
	set := make(map[string]*liveStream)
	for i := range 300 {
		name := []string{"a", "bb", "ccc"}[i%3]
		if set[name] == nil {
			set[name] = &liveStream{}
		}
		v := uint64(i + 1)
		if i%7 == 0 {
			v = 1 // out of order
		}
		set[name].add(streamEntry{rel: uint32(i * 3), pos: uint32(i * 100), size: 100, span: 2, first: v, last: v})
	}
	seed := encodeStreams(1000, 1000+900, 300*100, set)
	f.Add(seed)
	f.Add(seed[:len(seed)-1])
	f.Add(seed[:StreamsHeaderSize])
	f.Add(encodeStreams(5, 5, 0, nil))
	flipped := bytes.Clone(seed)
	flipped[len(flipped)-40] ^= 1
	f.Add(flipped)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		sf, fullErr := decodeStreamsFile(data)
		if fullErr == nil {
			set := make(map[string]*liveStream)
			for _, d := range sf.dirs {
				ls := &liveStream{}
				for _, e := range sf.entries[d.first : d.first+d.count] {
					ls.add(e)
				}
				set[d.name] = ls
			}
			if again := encodeStreams(sf.header.base, sf.header.next, int64(sf.header.logSize), set); !bytes.Equal(again, data) {
				t.Fatalf("re-encoding differs")
			}
		}
		path := filepath.Join(t.TempDir(), streamsName(0))
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		h, _ := decodeStreamsHeader(data, int64(len(data)))
		sx, err := openStreams(OSFS{}, path, h.base, int64(h.logSize))
		if err != nil {
			if fullErr == nil {
				t.Fatalf("openStreams refused a file decodeStreamsFile accepts: %v", err)
			}
			return
		}
		defer sx.f.Close()
		for _, d := range sx.dirs {
			src := entrySource{sx: sx, first: d.first, n: int(d.count), blk: -1}
			for i := range src.n {
				e, err := src.at(i)
				if err != nil {
					if !errors.Is(err, ErrCorrupt) || fullErr == nil {
						t.Fatalf("entry %d of %q: %v", i, d.name, err)
					}
					break
				}
				if fullErr == nil && e != sf.entries[d.first+uint32(i)] {
					t.Fatalf("entry %d of %q differs", i, d.name)
				}
			}
		}
	})
}
