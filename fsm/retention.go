package fsm

import (
	"fmt"
	"slices"
	"strings"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/tsstore/tsstore/segment"
)

// Commands of retention (issue #14). Frozen values, like the others.
const (
	// CmdSetRetention sets or removes the retention policy of a stream
	// prefix (SetRetentionCommand).
	CmdSetRetention CommandType = 4
	// CmdCompact commits a cut: every replica drops the whole sealed
	// segments below it (CompactCommand).
	CmdCompact CommandType = 5
)

// SegmentState is what the cluster knows of a sealed segment's bytes.
// Frozen: carried in states and snapshots.
type SegmentState uint8

const (
	// SegmentLocal: every replica holds the segment on local disk.
	SegmentLocal SegmentState = 1
	// SegmentDropped: a committed cut removed it (CompactCommand).
	SegmentDropped SegmentState = 2
	// SegmentTiered: a committed SegmentTieredCommand says the object
	// store holds the segment's .log bytes under the entry's Key (checked
	// against Size and Digest). Each replica evicts its local .log once a
	// Head of the object matches (server/tier_evict.go) and then reads
	// the segment from the store (segment.Log.Evict).
	SegmentTiered SegmentState = 3
)

// HasLocalCopy says whether every replica keeps the segment's files:
// local and tiered segments (tiered ones keep theirs until dropping the
// local copy is built), not dropped ones.
func (s SegmentState) HasLocalCopy() bool { return s == SegmentLocal || s == SegmentTiered }

func (s SegmentState) String() string {
	switch s {
	case SegmentLocal:
		return "local"
	case SegmentDropped:
		return "dropped"
	case SegmentTiered:
		return "tiered"
	}
	return fmt.Sprintf("state-%d", uint8(s))
}

// ManifestEntry describes one sealed segment in the replicated manifest.
// Digest is the CRC-32C of its .log bytes (segment.Log.Digest), equal on
// every replica, since sealed segments are byte-identical.
// Key is the object key of a tiered segment (SegmentTiered, and a
// dropped entry that was tiered: the object to delete), else "".
// Frozen: msgpack array (BaseOffset, NextOffset, Size, Digest,
// LastTimestamp, State), with Key as a 7th element only when not empty
// (tiered.go), so entries without one keep their bytes.
type ManifestEntry struct {
	BaseOffset    uint64
	NextOffset    uint64
	Size          int64
	Digest        uint32
	LastTimestamp int64 // unix nanoseconds of the last batch
	State         SegmentState
	Key           string
}

// RetentionPolicy limits the streams whose names start with Prefix: a
// sealed segment may go once the policy of every stream in it allows it
// (the longest matching prefix decides for a stream), by age (its last
// batch is older than MaxAge) or by size (the segments holding the
// prefix's streams after it add up to MaxBytes or more). 0 is no limit.
// Frozen: msgpack array (Prefix, MaxAge, MaxBytes).
type RetentionPolicy struct {
	_msgpack struct{} `msgpack:",as_array"`
	Prefix   string
	MaxAge   int64 // nanoseconds
	MaxBytes int64
}

// maxDroppedEntries bounds the dropped segments the manifest remembers
// (the oldest go first); local ones are all kept.
const maxDroppedEntries = 1024

// Retention is the replicated state of retention: the policies, the
// first offset still kept (reads below it are compacted), and the
// manifest of sealed segments. It is the optional 8th element of State,
// written only when not empty.
// Frozen: msgpack array (FirstOffset, PolicyVersion, Policies, Segments),
// with a 5th element, Thins, when there are any (thin.go), and a 6th,
// Deleted, when there are deleted streams (delete.go).
type Retention struct {
	FirstOffset   uint64
	PolicyVersion uint64            // bumped by every SetRetentionCommand
	Policies      []RetentionPolicy // sorted by Prefix
	Segments      []ManifestEntry   // oldest first: dropped, then local
	// Thins are the committed rewrites of local sealed segments, in
	// commit order (ThinCommand); a segment's go when a cut drops it.
	Thins []ThinSpec
	// Deleted are the deleted streams (DeleteStreamCommand, delete.go).
	Deleted []DeletedStream
}

func (r *Retention) empty() bool {
	return r.FirstOffset == 0 && r.PolicyVersion == 0 && len(r.Policies) == 0 && len(r.Segments) == 0 && len(r.Thins) == 0 && len(r.Deleted) == 0
}

func (r *Retention) clone() Retention {
	return Retention{FirstOffset: r.FirstOffset, PolicyVersion: r.PolicyVersion,
		Policies: slices.Clone(r.Policies), Segments: slices.Clone(r.Segments), Thins: slices.Clone(r.Thins), Deleted: slices.Clone(r.Deleted)}
}

// Policy returns the policy that governs stream: the longest matching
// prefix.
func (r *Retention) Policy(stream string) (RetentionPolicy, bool) {
	var best RetentionPolicy
	found := false
	for _, p := range r.Policies {
		if strings.HasPrefix(stream, p.Prefix) && (!found || len(p.Prefix) > len(best.Prefix)) {
			best, found = p, true
		}
	}
	return best, found
}

// SetRetentionCommand sets the policy of Prefix, or removes it (Remove).
// Frozen: msgpack array (Prefix, MaxAge, MaxBytes, Remove).
type SetRetentionCommand struct {
	_msgpack struct{} `msgpack:",as_array"`
	Prefix   string
	MaxAge   int64
	MaxBytes int64
	Remove   bool
}

// CompactCommand is a cut the leader decided under the policies of
// PolicyVersion: every sealed segment that ends at or before Cut goes.
// Cut must be the end of a local or tiered segment in the manifest.
// Frozen: msgpack array (Cut, PolicyVersion).
type CompactCommand struct {
	_msgpack      struct{} `msgpack:",as_array"`
	Cut           uint64
	PolicyVersion uint64
}

// EncodeMsgpack writes the state as a 5-element array, 6 with Members, 7
// with Runs, or 8 with Retention (the ones before then written even when
// empty).
func (s State) EncodeMsgpack(e *msgpack.Encoder) error {
	n := 5
	if !s.Members.empty() {
		n = 6
	}
	if len(s.Runs) > 0 {
		n = 7
	}
	if !s.Retention.empty() {
		n = 8
	}
	if err := e.EncodeArrayLen(n); err != nil {
		return err
	}
	for _, v := range []any{s.NextOffset, s.LastTimestamp, s.Streams, s.Producers, s.Nodes} {
		if err := e.Encode(v); err != nil {
			return err
		}
	}
	if n >= 6 {
		if err := e.Encode(&s.Members); err != nil {
			return err
		}
	}
	if n >= 7 {
		if err := e.Encode(s.Runs); err != nil {
			return err
		}
	}
	if n == 8 {
		return e.Encode(&s.Retention)
	}
	return nil
}

// DecodeMsgpack reads a state of 5 to 8 elements.
func (s *State) DecodeMsgpack(d *msgpack.Decoder) error {
	n, err := arrayLen(d, "state", 5, 8)
	if err != nil {
		return err
	}
	for _, v := range []any{&s.NextOffset, &s.LastTimestamp, &s.Streams, &s.Producers, &s.Nodes} {
		if err := d.Decode(v); err != nil {
			return err
		}
	}
	if n >= 6 {
		if err := d.Decode(&s.Members); err != nil {
			return err
		}
	}
	if n >= 7 {
		if err := d.Decode(&s.Runs); err != nil {
			return err
		}
	}
	if n == 8 {
		return d.Decode(&s.Retention)
	}
	return nil
}

// Retention returns a copy of the replicated retention state.
func (p *Processor) Retention() Retention {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.mu.state.Retention.clone()
}

// FirstOffset is the first offset readers may ask for (the last committed
// cut, or the log's first offset if that is higher).
func (p *Processor) FirstOffset() uint64 {
	var first uint64
	_ = p.WithLog(func(l *segment.Log) error { first = l.FirstOffset(); return nil })
	p.mu.RLock()
	defer p.mu.RUnlock()
	return max(first, p.mu.state.Retention.FirstOffset)
}

func (p *Processor) applySetRetention(index uint64, cmd *SetRetentionCommand) *ApplyResult {
	if err := validatePolicy(cmd); err != nil {
		return &ApplyResult{Err: err}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	r := &p.mu.state.Retention
	i, found := slices.BinarySearchFunc(r.Policies, cmd.Prefix, func(p RetentionPolicy, prefix string) int {
		return strings.Compare(p.Prefix, prefix)
	})
	switch {
	case cmd.Remove && found:
		r.Policies = slices.Delete(r.Policies, i, i+1)
	case cmd.Remove:
	case found:
		r.Policies[i].MaxAge, r.Policies[i].MaxBytes = cmd.MaxAge, cmd.MaxBytes
	default:
		r.Policies = slices.Insert(r.Policies, i, RetentionPolicy{Prefix: cmd.Prefix, MaxAge: cmd.MaxAge, MaxBytes: cmd.MaxBytes})
	}
	r.PolicyVersion++
	p.retentionWM = index
	return &ApplyResult{}
}

func validatePolicy(cmd *SetRetentionCommand) error {
	switch {
	case cmd.MaxAge < 0 || cmd.MaxBytes < 0:
		return fmt.Errorf("%w: retention of %q: negative limit", ErrInvalidPolicy, cmd.Prefix)
	case !cmd.Remove && cmd.MaxAge == 0 && cmd.MaxBytes == 0:
		return fmt.Errorf("%w: retention of %q: no limit (give a maximum age or size, or remove the policy)", ErrInvalidPolicy, cmd.Prefix)
	}
	return nil
}

// applyCompact applies a committed cut. It is decided already; what
// replicas check here only guards against a stale or malformed plan, and
// depends on replicated state alone, so they all take the same branch:
//
//   - a plan made under other policies than the current ones is refused
//     (ErrStalePlan): the leader plans again;
//   - a cut at or below the first kept offset changes nothing;
//   - a cut that is not the end of a local sealed segment is refused.
//
// Then the state moves (FirstOffset, the manifest entries below the cut
// become dropped) and the log's read floor rises: reads below the cut are
// compacted from this entry on. The rest is the cut worker's (cuts.go), off
// the apply path so appends wait at most for its one log fsync: sync the
// log, write a checkpoint at this index, then drop the files. The
// checkpoint comes first because the state is rebuilt at start from the
// checkpoint and the log after it: the log below the cut is about to go.
func (p *Processor) applyCompact(index uint64, cmd *CompactCommand) *ApplyResult {
	p.mu.Lock()
	r := &p.mu.state.Retention
	switch {
	case cmd.PolicyVersion != r.PolicyVersion:
		p.mu.Unlock()
		return &ApplyResult{Err: fmt.Errorf("%w: planned under policy version %d, current %d", ErrStalePlan, cmd.PolicyVersion, r.PolicyVersion)}
	case cmd.Cut <= r.FirstOffset:
		p.mu.Unlock()
		p.retentionWM = index
		return &ApplyResult{}
	}
	at := slices.IndexFunc(r.Segments, func(e ManifestEntry) bool { return e.State.HasLocalCopy() && e.NextOffset == cmd.Cut })
	if at < 0 {
		p.mu.Unlock()
		return &ApplyResult{Err: fmt.Errorf("%w: %d is not the end of a sealed segment", ErrBadCut, cmd.Cut)}
	}
	for i := range r.Segments[:at+1] {
		r.Segments[i].State = SegmentDropped
	}
	if dropped := slices.IndexFunc(r.Segments, func(e ManifestEntry) bool { return e.State != SegmentDropped }); dropped > maxDroppedEntries {
		r.Segments = slices.Delete(r.Segments, 0, dropped-maxDroppedEntries)
	}
	r.FirstOffset = cmd.Cut
	r.Thins = slices.DeleteFunc(r.Thins, func(s ThinSpec) bool { return s.BaseOffset < cmd.Cut })
	p.mu.Unlock()
	p.log.SetFirstOffset(cmd.Cut)
	p.retentionWM = index
	p.queueCut(index, cmd.Cut, cmd.Cut)
	return &ApplyResult{}
}

// manifestEnd is the offset after the last sealed segment the manifest
// lists (the first kept offset if it lists none). Apply goroutine only.
func (p *Processor) manifestEnd() uint64 {
	r := &p.mu.state.Retention
	if n := len(r.Segments); n > 0 {
		return max(r.FirstOffset, r.Segments[n-1].NextOffset)
	}
	return r.FirstOffset
}

// syncManifest adds the sealed segments the log has and the manifest does
// not yet list (segments seal during Apply, at offsets every replica
// shares, so replicas add the same entries). A segment whose digest the
// log does not know (sealed before a restart and not read whole since)
// is read once here.
func (p *Processor) syncManifest(log *segment.Log, st *State) error {
	r := &st.Retention
	from := r.FirstOffset
	if n := len(r.Segments); n > 0 {
		from = max(from, r.Segments[n-1].NextOffset)
	}
	segs := log.Segments()
	if len(segs) == 0 {
		return nil
	}
	for _, s := range segs[:len(segs)-1] {
		if s.BaseOffset < from || s.Size == 0 {
			continue
		}
		d := s.Digest
		if !s.DigestKnown {
			var err error
			if d, err = log.Digest(s.BaseOffset, false); err != nil {
				return err
			}
		}
		e := ManifestEntry{BaseOffset: s.BaseOffset, NextOffset: s.NextOffset, Size: s.Size, Digest: d,
			LastTimestamp: s.LastTimestamp, State: SegmentLocal}
		p.mu.Lock()
		r.Segments = append(r.Segments, e)
		p.mu.Unlock()
	}
	return nil
}
