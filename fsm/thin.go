package fsm

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/tsstore/tsstore/record"
	"github.com/tsstore/tsstore/segment"
)

// Run compaction (issue #14): the leader commits a ThinCommand for one
// sealed segment; every replica rewrites its byte-identical copy the same
// deterministic way (segment.ThinSealed) and swaps it in.
//
// Apply moves the state only: the manifest entry takes the new size and
// digest the leader computed (every replica must get exactly those bytes,
// which the rewrite checks before it publishes), and the spec is added to
// Retention.Thins. The cut worker (cuts.go) then writes a checkpoint at
// the command's index and rewrites the segment: the state is rebuilt at
// start from the checkpoint and the log after it, and the rewrite drops
// records below the checkpoint's offsets only once that checkpoint is
// durable. A segment whose local digest is not its manifest entry's while
// Thins names it is rewritten again by the worker: after a crash between
// the checkpoint and the swap, after a restart, and after a snapshot
// install whose files predate the rewrite (Restore). Thinning is
// idempotent, so doing it again is harmless.

// CmdThin commits the rewrite of one sealed segment (ThinCommand).
// Frozen value.
const CmdThin CommandType = 6

// ThinSpec drops from one sealed segment the records of Stream at offsets
// at or below Upto whose type is not in Keep. Frozen: msgpack array
// (BaseOffset, Stream, Upto, Keep).
type ThinSpec struct {
	_msgpack   struct{} `msgpack:",as_array"`
	BaseOffset uint64
	Stream     string
	Upto       uint64
	Keep       []string
}

// drops reports whether the spec drops r.
func (s *ThinSpec) drops(r *record.Record) bool {
	if r.Offset > s.Upto || string(r.Stream) != s.Stream {
		return false
	}
	for _, k := range s.Keep {
		if string(r.Type) == k {
			return false
		}
	}
	return true
}

// keepFunc keeps the records no spec drops.
func keepFunc(specs []ThinSpec) segment.KeepFunc {
	return func(r *record.Record) bool {
		for i := range specs {
			if specs[i].drops(r) {
				return false
			}
		}
		return true
	}
}

// ThinCommand is a rewrite the leader planned: the segment at
// Spec.BaseOffset, whose manifest digest is PrevDigest, becomes Size
// bytes with digest Digest once Spec (and the specs already committed for
// it) are applied. Frozen: msgpack array (Spec, PrevDigest, Size,
// Digest).
type ThinCommand struct {
	_msgpack   struct{} `msgpack:",as_array"`
	Spec       ThinSpec
	PrevDigest uint32
	Size       int64
	Digest     uint32
}

// ErrBadThin: a rewrite of a segment the manifest does not list as a
// local sealed segment, or a malformed one.
var ErrBadThin = errors.New("compaction rewrite of a segment that is not a local sealed one")

// errPinned: a snapshot being written links the segment's file.
var errPinned = errors.New("a snapshot being written holds the segment")

// ErrNothingToThin: the planned rewrite would not drop a record.
var ErrNothingToThin = errors.New("nothing to drop from the segment")

// ErrNotReconciled: the local copy of the segment is not yet the one the
// manifest describes (a committed rewrite not done here yet).
var ErrNotReconciled = errors.New("the segment's committed rewrite is not done on this node yet")

// PlanThin computes the command that applies spec to its segment: the
// size and digest every replica will get. It reads the local copy, which
// must match the manifest. Leader only; nothing is written.
func (p *Processor) PlanThin(spec ThinSpec) (ThinCommand, error) {
	p.mu.RLock()
	r := &p.mu.state.Retention
	i := slices.IndexFunc(r.Segments, func(e ManifestEntry) bool { return e.BaseOffset == spec.BaseOffset })
	var e ManifestEntry
	if i >= 0 {
		e = r.Segments[i]
	}
	specs := append(r.thinsOf(spec.BaseOffset), spec)
	p.mu.RUnlock()
	if i < 0 || e.State != SegmentLocal {
		return ThinCommand{}, fmt.Errorf("%w: %d", ErrBadThin, spec.BaseOffset)
	}
	var res segment.ThinResult
	err := p.WithLog(func(l *segment.Log) error {
		d, err := l.Digest(spec.BaseOffset, false)
		if err != nil {
			return err
		}
		if d != e.Digest {
			return fmt.Errorf("%w: segment %d has digest %08x here, %08x in the manifest", ErrNotReconciled, spec.BaseOffset, d, e.Digest)
		}
		res, err = l.ThinDigest(spec.BaseOffset, keepFunc(specs))
		return err
	})
	if err != nil {
		return ThinCommand{}, err
	}
	if res.Dropped == 0 || (res.Size == e.Size && res.Digest == e.Digest) {
		return ThinCommand{}, fmt.Errorf("%w: %d", ErrNothingToThin, spec.BaseOffset)
	}
	return ThinCommand{Spec: spec, PrevDigest: e.Digest, Size: res.Size, Digest: res.Digest}, nil
}

// thinsOf returns the specs committed for the segment at base.
func (r *Retention) thinsOf(base uint64) []ThinSpec {
	var out []ThinSpec
	for _, s := range r.Thins {
		if s.BaseOffset == base {
			out = append(out, s)
		}
	}
	return out
}

// applyThin applies a committed rewrite. Like applyCompact, what it checks
// depends on replicated state alone: a segment below the first kept offset
// (a cut dropped it since) is a no-op; one the manifest does not list as
// local, or whose digest moved since the plan, is refused.
func (p *Processor) applyThin(index uint64, cmd *ThinCommand) *ApplyResult {
	p.mu.Lock()
	r := &p.mu.state.Retention
	base := cmd.Spec.BaseOffset
	if base < r.FirstOffset {
		p.mu.Unlock()
		p.retentionWM = index
		return &ApplyResult{}
	}
	i := slices.IndexFunc(r.Segments, func(e ManifestEntry) bool { return e.BaseOffset == base && e.State == SegmentLocal })
	switch {
	case i < 0:
		p.mu.Unlock()
		return &ApplyResult{Err: fmt.Errorf("%w: %d", ErrBadThin, base)}
	case cmd.Size <= 0 || cmd.Spec.Stream == "":
		p.mu.Unlock()
		return &ApplyResult{Err: fmt.Errorf("%w: size %d, stream %q", ErrBadThin, cmd.Size, cmd.Spec.Stream)}
	case r.Segments[i].Digest != cmd.PrevDigest:
		p.mu.Unlock()
		return &ApplyResult{Err: fmt.Errorf("%w: segment %d was %08x when planned, is %08x", ErrStalePlan, base, cmd.PrevDigest, r.Segments[i].Digest)}
	}
	r.Segments[i].Size, r.Segments[i].Digest = cmd.Size, cmd.Digest
	r.Thins = append(r.Thins, cmd.Spec)
	end := r.Segments[i].NextOffset
	p.mu.Unlock()
	p.retentionWM = index
	p.queueCut(index, 0, end)
	return &ApplyResult{}
}

// ThinStats counts this node's rewrites since it started.
type ThinStats struct {
	Rewritten      uint64 // segments rewritten
	BytesReclaimed uint64 // their bytes before minus after
	Failed         uint64 // rewrites that did not produce the committed bytes
}

// ThinStats returns the rewrite counters.
func (p *Processor) ThinStats() ThinStats {
	p.thin.mu.Lock()
	defer p.thin.mu.Unlock()
	return p.thin.stats
}

// setThins hands the worker the durable retention state whose rewrites it
// must make (load, Restore, a checkpoint the worker wrote).
func (p *Processor) setThins(r *Retention) {
	p.thin.mu.Lock()
	p.thin.state = r
	p.thin.failed = nil
	p.thin.mu.Unlock()
}

// gateThin publishes a rewrite unless a snapshot being written pins the
// files (it would link the new .log with the old size); pin waits for a
// publish in progress. It takes no lock that is held while logMu is
// waited for (the worker holds logMu shared here).
func (p *Processor) gateThin(publish func() error) error {
	p.thin.pub.Lock()
	defer p.thin.pub.Unlock()
	if p.thin.pinned.Load() > 0 {
		return errPinned
	}
	defer p.observeHold("publish", time.Now())
	return publish()
}

// reconcileThins rewrites the local segments whose digest is not their
// manifest entry's while a committed spec names them. Worker goroutine.
// It holds the log (logMu shared) for one segment at a time, so a Restore
// waits for one rewrite at most.
func (p *Processor) reconcileThins() {
	p.thin.mu.Lock()
	r := p.thin.state
	p.thin.mu.Unlock()
	if r == nil || len(r.Thins) == 0 {
		return
	}
	for _, e := range r.Segments {
		if e.State != SegmentLocal {
			continue
		}
		if specs := r.thinsOf(e.BaseOffset); len(specs) > 0 {
			p.reconcileOne(e, specs)
		}
	}
}

// reconcileOne rewrites one segment to its manifest entry if it is not
// there yet.
func (p *Processor) reconcileOne(e ManifestEntry, specs []ThinSpec) {
	p.thin.mu.Lock()
	failed := p.thin.failed != nil && p.thin.failed[e.BaseOffset] == e.Digest
	p.thin.mu.Unlock()
	if failed {
		return
	}
	var res segment.ThinResult
	err := p.WithLog(func(l *segment.Log) error {
		d, err := l.Digest(e.BaseOffset, false)
		if err != nil || d == e.Digest {
			return err
		}
		res, err = l.ThinSealed(e.BaseOffset, keepFunc(specs), segment.ThinOptions{
			Expect: func(res segment.ThinResult) error {
				if res.Size != e.Size || res.Digest != e.Digest {
					return fmt.Errorf("%w: %d bytes, crc %08x; committed %d bytes, crc %08x", segment.ErrThinMismatch, res.Size, res.Digest, e.Size, e.Digest)
				}
				return nil
			},
			Gate: p.gateThin,
		})
		return err
	})
	switch {
	case errors.Is(err, errPinned):
		// unpin wakes the worker again.
	case errors.Is(err, segment.ErrThinMismatch):
		p.logger.Error("compaction: this node's rewrite of a segment differs from the committed one; the segment stays as it was (verify --cluster shows it)", "base_offset", e.BaseOffset, "error", err)
		p.thin.mu.Lock()
		if p.thin.failed == nil {
			p.thin.failed = map[uint64]uint32{}
		}
		p.thin.failed[e.BaseOffset] = e.Digest
		p.thin.stats.Failed++
		p.thin.mu.Unlock()
	case errors.Is(err, segment.ErrNotSealed), errors.Is(err, segment.ErrClosed):
		// dropped by a cut since, or closing
	case err != nil:
		p.logger.Error("compaction: rewriting a segment failed; retried at the next wake", "base_offset", e.BaseOffset, "error", err)
	case res.Rewritten:
		p.thin.mu.Lock()
		p.thin.stats.Rewritten++
		p.thin.stats.BytesReclaimed += uint64(max(0, res.OldSize-res.Size))
		p.thin.mu.Unlock()
		p.logger.Info("compaction rewrote a segment", "base_offset", e.BaseOffset, "bytes_before", res.OldSize, "bytes_after", res.Size, "records_dropped", res.Dropped)
	}
}

// EncodeMsgpack writes the retention state as a 4-element array, 5 with
// Thins, or 6 with Deleted (so a state without them is encoded as
// before).
func (r *Retention) EncodeMsgpack(e *msgpack.Encoder) error {
	n := 4
	if len(r.Thins) > 0 {
		n = 5
	}
	if len(r.Deleted) > 0 {
		n = 6
	}
	if err := e.EncodeArrayLen(n); err != nil {
		return err
	}
	for _, v := range []any{r.FirstOffset, r.PolicyVersion, r.Policies, r.Segments} {
		if err := e.Encode(v); err != nil {
			return err
		}
	}
	if n >= 5 {
		if err := e.Encode(r.Thins); err != nil {
			return err
		}
	}
	if n == 6 {
		return e.Encode(r.Deleted)
	}
	return nil
}

// DecodeMsgpack reads a retention state of 4 to 6 elements.
func (r *Retention) DecodeMsgpack(d *msgpack.Decoder) error {
	n, err := arrayLen(d, "retention", 4, 6)
	if err != nil {
		return err
	}
	for _, v := range []any{&r.FirstOffset, &r.PolicyVersion, &r.Policies, &r.Segments} {
		if err := d.Decode(v); err != nil {
			return err
		}
	}
	if n >= 5 {
		if err := d.Decode(&r.Thins); err != nil {
			return err
		}
	}
	if n == 6 {
		return d.Decode(&r.Deleted)
	}
	return nil
}

// ThinnedUpto returns how far committed rewrites thinned stream in the
// segment at base (0: not at all).
func (r *Retention) ThinnedUpto(base uint64, stream string) uint64 {
	var upto uint64
	for _, s := range r.Thins {
		if s.BaseOffset == base && s.Stream == stream {
			upto = max(upto, s.Upto)
		}
	}
	return upto
}

// StreamCompactedUpto returns the highest offset up to which committed
// rewrites thinned stream in any segment still kept, or a delete
// covers it (0: none). A
// single-stream read from at or below it would miss versions.
func (p *Processor) StreamCompactedUpto(stream string) uint64 {
	p.mu.RLock()
	defer p.mu.RUnlock()
	var upto uint64
	for _, s := range p.mu.state.Retention.Thins {
		if s.Stream == stream {
			upto = max(upto, s.Upto)
		}
	}
	if d, ok := p.mu.state.Retention.deleted(stream); ok {
		upto = max(upto, d.Upto)
	}
	return upto
}
