package server

import (
	"fmt"
	"slices"
	"testing"

	"github.com/tsstore/tsstore/record"
)

// thinBatch builds a batch spanning [base, last] holding only the records
// at offsets.
func thinBatch(t *testing.T, base, last uint64, offsets ...uint64) []byte {
	t.Helper()
	var b record.Builder
	b.Reset(base, 7, 1_800_000_000_000_000_000, 0)
	for _, off := range offsets {
		r := record.Record{Offset: off, StreamVersion: off, Stream: []byte("s"), Type: []byte("T"), Payload: []byte(fmt.Sprint(off))}
		if err := b.AddAt(&r, off-base); err != nil {
			t.Fatal(err)
		}
	}
	b.ExtendSpan(last - base)
	fb, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return slices.Clone(fb)
}

// spans decodes raw into (base, last, record offsets) per batch.
func spans(t *testing.T, raw []byte) [][]uint64 {
	t.Helper()
	var out [][]uint64
	for len(raw) > 0 {
		b, rest, err := record.Next(raw)
		if err != nil {
			t.Fatal(err)
		}
		raw = rest
		h := b.Header()
		s := []uint64{h.BaseOffset, h.LastOffset()}
		it := b.Records()
		var r record.Record
		for it.Next(&r) {
			s = append(s, r.Offset)
		}
		out = append(out, s)
	}
	return out
}

// A message continuing at from after a rewrite merged the batch that
// started there into an earlier batch's span starts at from: the merged
// batch is sent from from on, or, without a record there, the next batch
// is stretched back to from.
func TestRebaseFrom(t *testing.T) {
	var b record.Builder
	a := thinBatch(t, 10, 19, 10, 12, 18)
	next := thinBatch(t, 20, 21, 20, 21)
	raw := append(slices.Clone(a), next...)
	for _, c := range []struct {
		name string
		raw  []byte
		from uint64
		want [][]uint64
	}{
		{"starts at from", raw, 10, [][]uint64{{10, 19, 10, 12, 18}, {20, 21, 20, 21}}},
		{"merged batch cut at from", raw, 15, [][]uint64{{15, 19, 18}, {20, 21, 20, 21}}},
		{"no record from from on: the next stretched back", raw, 19, [][]uint64{{19, 21, 20, 21}}},
		{"a lone batch without such a record stays", a, 19, [][]uint64{{10, 19, 10, 12, 18}}},
		{"from before the batch", raw, 5, [][]uint64{{10, 19, 10, 12, 18}, {20, 21, 20, 21}}},
	} {
		got := spans(t, rebaseFrom(&b, slices.Clone(c.raw), c.from))
		if fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}
