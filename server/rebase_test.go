package server

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	pb "github.com/tsstore/tsstore/proto/tsstorev1"
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
		if h.IsControl() {
			s = append(s, h.BaseOffset) // the marker
			out = append(out, s)
			continue
		}
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
// batch is sent from from on, or, without a record there, as a control
// batch over the rest of its span.
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
		{"no record from from on: a control batch", raw, 19, [][]uint64{{19, 19, 19}, {20, 21, 20, 21}}},
		{"a lone batch cut at from", a, 13, [][]uint64{{13, 19, 18}}},
		{"a lone batch without such a record: a control batch", a, 19, [][]uint64{{19, 19, 19}}},
		{"from before the batch", raw, 5, [][]uint64{{10, 19, 10, 12, 18}, {20, 21, 20, 21}}},
	} {
		got := spans(t, rebaseFrom(&b, slices.Clone(c.raw), c.from))
		if fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

// A Read's next message after a rewrite that merged the batch it starts at
// into an earlier batch's span (a deleted stream's batch, dropped whole)
// starts at the stream's position, not at the earlier batch.
func TestReaderContinuesAcrossARewrite(t *testing.T) {
	tc := newTestCluster(t, 1, func(c *Config) {
		c.Segment.SegmentBytes = 64 << 10
		c.RetentionInterval = 0
	})
	l := tc.leader()
	ctx := ctxT(t)
	raw := dial(t, l)
	for i := range 200 { // single-stream batches, keep and gone alternating
		stream := []string{"keep", "gone"}[i%2]
		req := &pb.AppendRequest{Events: []*pb.Event{ev(stream, strings.Repeat("x", 500)), ev(stream, strings.Repeat("y", 500))}}
		if _, err := raw.Append(ctx, req); err != nil {
			t.Fatal(err)
		}
	}
	waitAllApplied(t, tc)
	sel, err := l.newSelection(&pb.ReadRequest{MaxMessageBytes: 1})
	if err != nil {
		t.Fatal(err)
	}
	r := &reader{n: l, sel: sel}
	end := l.proc.NextOffset()
	buf, next, err := r.next(end)
	if err != nil {
		t.Fatal(err)
	}
	put(buf)
	r.sel.from = next // as send does
	// Delete "gone" and rewrite the sealed segments: its batches are
	// dropped whole, covered by the span of the "keep" batch before each.
	if _, err := dialRetention(t, l).DeleteStream(ctx, &pb.DeleteStreamRequest{Stream: "gone"}); err != nil {
		t.Fatal(err)
	}
	if done, err := l.compactRuns(time.Now()); err != nil || done == 0 {
		t.Fatalf("compactRuns: %d, %v", done, err)
	}
	waitAllApplied(t, tc)
	waitRewritten(t, tc)
	buf, _, err = r.next(end)
	if err != nil {
		t.Fatal(err)
	}
	defer put(buf)
	h, err := record.ParseHeader(*buf)
	if err != nil {
		t.Fatal(err)
	}
	if h.BaseOffset != next {
		t.Fatalf("the message after the rewrite starts at %d, the stream was at %d", h.BaseOffset, next)
	}
}
