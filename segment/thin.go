package segment

import (
	"errors"
	"fmt"
	"hash/crc32"
	"io"

	"github.com/tsstore/tsstore/record"
)

// thinSuffix names the temporary .log of a thinning: <B>.log.thin.tmp
// (a *.tmp file, so Open removes a leftover one).
const thinSuffix = ".thin" + TmpSuffix

// KeepFunc decides whether a record stays when a sealed segment is
// thinned. It must be a pure function of the record: every replica
// thins its byte-identical copy with it and must get the same bytes.
type KeepFunc func(r *record.Record) bool

// ThinResult describes a thinned segment.
type ThinResult struct {
	Size      int64  // bytes of the thinned .log
	Digest    uint32 // its CRC-32C (what Digest reports once it is in)
	Records   int    // records kept
	Dropped   int    // records dropped
	OldSize   int64  // bytes before
	Rewritten bool   // false when keep kept every record (nothing written)
}

// ErrThinMismatch means a thinning did not produce the size and digest
// the caller expected (ThinOptions.Expect): the segment stays as it was.
var ErrThinMismatch = errors.New("segment: thinned segment differs from the expected one")

// ThinOptions are ThinSealed's.
type ThinOptions struct {
	// Expect, if set, is checked against the verified new bytes before
	// anything is published; an error keeps the old segment.
	Expect func(r ThinResult) error
	// Gate, if set, is called with the publishing step (index files, the
	// rename of the .log, the swap); it may hold a lock around it or
	// refuse (returning an error without calling publish).
	Gate func(publish func() error) error
}

// ThinDigest computes what ThinSealed would make of the sealed segment at
// base, without writing anything: the size and digest every replica gets
// when it thins its copy with keep.
func (l *Log) ThinDigest(base uint64, keep KeepFunc) (ThinResult, error) {
	s, err := l.sealedReadable(base)
	if err != nil {
		return ThinResult{}, err
	}
	defer s.release()
	w := &digestWriter{}
	res, err := thinTo(w, s, keep)
	if err != nil {
		return res, l.errClosedRead(err)
	}
	res.Size, res.Digest = w.n, w.crc
	return res, nil
}

// ThinSealed rewrites the sealed segment at base keeping only the records
// keep accepts, the same deterministic way on every replica, and swaps the
// new file in as ReplaceSealed does (verified, index files rebuilt, then
// the .log renamed over the old one; readers holding the old segment keep
// reading it).
//
// The rewrite keeps offsets: a batch keeps its base offset, header
// (raft index, timestamp, attributes: a compressed batch is compressed
// again with its codec) and span even when records of it go. A batch that
// loses every record is covered by the span of the kept batch before it
// (or, at the start of the segment, the first kept batch is rebased to the
// segment's base offset), so the segment's batches stay contiguous from
// its base to its end. A segment is never emptied: if keep drops every
// record, the segment's last record stays. A batch that keeps all its
// records and is not stretched is copied byte for byte. Thinning is
// idempotent: thinning the result again with the same keep writes the same
// bytes (and ThinSealed then writes nothing).
func (l *Log) ThinSealed(base uint64, keep KeepFunc, opt ThinOptions) (ThinResult, error) {
	l.repl.Lock()
	defer l.repl.Unlock()
	old, err := l.sealed(base)
	if err != nil {
		return ThinResult{}, err
	}
	defer old.release()
	if old.damaged != nil {
		return ThinResult{}, old.damaged
	}
	if old.remote != nil {
		return ThinResult{}, fmt.Errorf("%w: thin %d", ErrTiered, base)
	}
	prevTS, nextTS := l.neighbourTimes(old)
	tmp := old.path + thinSuffix
	var res ThinResult
	ns, set, err := l.writeReplacement(old, tmp, func(f File) (int64, error) {
		w := &digestWriter{w: f}
		var err error
		res, err = thinTo(w, old, keep)
		res.Size, res.Digest = w.n, w.crc
		return w.n, err
	}, prevTS, nextTS)
	if err != nil {
		_ = l.fs.Remove(tmp)
		return res, l.errClosedRead(err)
	}
	if res.Size != ns.size || res.Digest != ns.digest {
		err = fmt.Errorf("segment: thinning %s: wrote %d bytes (crc %08x), read back %d (crc %08x)", old.path, res.Size, res.Digest, ns.size, ns.digest)
	}
	if err == nil && opt.Expect != nil {
		err = opt.Expect(res)
	}
	if err == nil && res.Size == old.size && old.digestKnown && res.Digest == old.digest {
		// Nothing to drop (already thinned): keep the file as it is.
		ns.closeFiles()
		_ = l.fs.Remove(tmp)
		return res, nil
	}
	if err != nil {
		ns.closeFiles()
		_ = l.fs.Remove(tmp)
		return res, err
	}
	// The index files are written and fsynced before the gate, so that a
	// caller's lock around publish (the fsm's, which a snapshot being
	// taken waits for on Raft's apply goroutine) is held across renames
	// and one directory fsync, not four fsyncs.
	st, err := l.stageReplacement(ns, set)
	if err != nil {
		ns.closeFiles()
		_ = l.fs.Remove(tmp)
		return res, err
	}
	published := false
	publish := func() error {
		published = true
		if err := l.publishReplacement(ns, tmp, st); err != nil {
			ns.closeFiles()
			_ = l.fs.Remove(tmp)
			return err
		}
		return l.swapSealed(old, ns)
	}
	if opt.Gate != nil {
		err = opt.Gate(publish)
	} else {
		err = publish()
	}
	if err != nil {
		if !published {
			// The gate refused: nothing was renamed.
			st.remove(l.fs)
			ns.closeFiles()
			_ = l.fs.Remove(tmp)
		}
		return res, err
	}
	res.Rewritten = true
	return res, nil
}

// digestWriter counts and checksums what it passes on to w (nil: discard).
type digestWriter struct {
	w   io.Writer
	n   int64
	crc uint32
}

func (d *digestWriter) Write(p []byte) (int, error) {
	if d.w != nil {
		if n, err := d.w.Write(p); err != nil {
			return n, err
		}
	}
	d.n += int64(len(p))
	d.crc = crc32.Update(d.crc, castagnoli, p)
	return len(p), nil
}

// thinTo writes the thinned batches of s to w. If keep drops every
// record, the segment's last record is kept.
func thinTo(w io.Writer, s *segment, keep KeepFunc) (ThinResult, error) {
	var last uint64
	kept := 0
	res, err := thinPass(w, s, func(r *record.Record) bool {
		last = r.Offset
		if keep(r) {
			kept++
			return true
		}
		return false
	})
	if err != nil || kept > 0 {
		return res, err
	}
	return thinPass(w, s, func(r *record.Record) bool { return r.Offset == last })
}

// thinPass is one pass of thinTo; it writes nothing if keep keeps
// nothing.
func thinPass(w io.Writer, s *segment, keep KeepFunc) (ThinResult, error) {
	res := ThinResult{OldSize: s.size}
	var (
		b       record.Builder
		raw     []byte // the pending output batch's input, copied
		pending bool
		changed bool   // pending must be re-encoded
		codec   byte   // its original compression
		pbase   uint64 // its base offset
		pend    uint64 // offset after its span
		comp    []byte
	)
	flush := func() error {
		if !pending {
			return nil
		}
		pending = false
		if !changed {
			_, err := w.Write(raw)
			return err
		}
		b.ExtendSpan(pend - 1 - pbase)
		fb, err := b.Finish()
		if err != nil {
			return err
		}
		if codec != record.CompressionNone {
			if fb, err = record.Compress(comp[:0], fb, codec); err != nil {
				return err
			}
			comp = fb[:0]
		}
		_, err = w.Write(fb)
		return err
	}
	first := true // no output batch yet: the first one is rebased to s.base
	err := walkBatches(s.f, s.path, 0, s.size, s.base, false, func(wb walkedBatch) error {
		h := wb.Header
		it := record.Batch(wb.Raw).Records()
		var rec record.Record
		n, keepN := 0, 0
		var batchBuilt bool
		for it.Next(&rec) {
			n++
			if !keep(&rec) {
				res.Dropped++
				continue
			}
			keepN++
			res.Records++
			if !batchBuilt {
				// A new output batch starts with this input batch.
				if err := flush(); err != nil {
					return err
				}
				batchBuilt = true
				pending, changed = true, false
				pbase = h.BaseOffset
				if first {
					pbase = s.base
				}
				first = false
				codec = h.Compression()
				raw = append(raw[:0], wb.Raw...)
				b.Reset(pbase, h.RaftIndex, h.Timestamp, h.Attributes&^record.AttrCompressionMask)
			}
			if err := b.AddAt(&rec, rec.Offset-pbase); err != nil {
				return err
			}
		}
		if err := it.Err(); err != nil {
			return err
		}
		switch {
		case keepN == 0 && pending:
			changed = true // the pending batch's span covers this one
		case keepN == 0:
		case keepN < n || pbase != h.BaseOffset:
			changed = true
		}
		pend = h.NextOffset()
		return nil
	})
	if err != nil {
		return res, err
	}
	return res, flush()
}
