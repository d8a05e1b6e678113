package fsm

import "github.com/tsstore/tsstore/record"

// batcher splits the records of one Raft entry into batches that each hold
// a single stream where they can: consecutive ops of one stream share a
// batch, an op that writes several streams gets a batch of its own. Group
// commit mixes many trainers' requests into one entry; splitting keeps
// every stream's records in batches of their own, so the segment's
// per-stream index serves a stream read without reading other streams'
// data. All batches carry the entry's raft index and timestamp; all but
// the last carry record.AttrContinued, and they are written with one write.
type batcher struct {
	bs    []record.Builder
	n     int    // builders in use
	key   string // stream of the current batch; "" if it mixes streams
	added uint64 // records added to the entry so far
	base  uint64
	index uint64
	ts    int64
	// compression is the entry's codec (AppendCommand.Compression);
	// zbufs hold the compressed batches, one per builder.
	compression byte
	zbufs       [][]byte
}

func (b *batcher) reset(base, index uint64, ts int64, compression byte) {
	b.n, b.key, b.added = 0, "", 0
	b.base, b.index, b.ts, b.compression = base, index, ts, compression
}

// next is the offset the next record of the entry gets.
func (b *batcher) next() uint64 { return b.base + b.added }

// begin returns the builder for an op whose events all belong to stream
// key ("" when they span several streams), opening a new batch when the
// current one holds another stream.
func (b *batcher) begin(key string) *record.Builder {
	if b.n == 0 || (b.bs[b.n-1].Count() > 0 && (key == "" || key != b.key)) {
		if b.n == len(b.bs) {
			b.bs = append(b.bs, record.Builder{})
		}
		b.bs[b.n].Reset(b.next(), b.index, b.ts, 0)
		b.n++
	}
	b.key = key
	return &b.bs[b.n-1]
}

// finish completes the entry's batches, compressed with the entry's codec
// (record.Compress keeps one that would not shrink as it is). They alias
// the builders' buffers until the next reset.
func (b *batcher) finish() ([]record.Batch, error) {
	var used []*record.Builder
	for i := range b.n {
		if b.bs[i].Count() > 0 {
			used = append(used, &b.bs[i])
		}
	}
	out := make([]record.Batch, len(used))
	for k, bld := range used {
		if k < len(used)-1 {
			bld.SetAttributes(record.AttrContinued)
		}
		batch, err := bld.Finish()
		if err != nil {
			return nil, err
		}
		if b.compression != record.CompressionNone {
			for len(b.zbufs) <= k {
				b.zbufs = append(b.zbufs, nil)
			}
			if batch, err = record.Compress(b.zbufs[k][:0], batch, b.compression); err != nil {
				return nil, err
			}
			b.zbufs[k] = batch
		}
		out[k] = batch
	}
	return out, nil
}

// opStream is the single stream all of op's events belong to, or "".
func opStream(op *AppendOp) string {
	s := op.Events[0].Stream
	for i := range op.Events {
		if op.Events[i].Stream != s {
			return ""
		}
	}
	return s
}
