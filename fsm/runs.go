package fsm

import (
	"bytes"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/vmihailenco/msgpack/v5"
)

// Training runs (docs/design.md, "Training runs").
//
// A run is a stream that has been fenced at least once. Fencing (starting
// or restarting a job attempt) appends one "$fence" event to the run's
// stream carrying the new generation, current+1; from then on every append
// to that stream must carry exactly the current generation, or it fails
// with a FencedError and writes nothing. The check is made at apply, on
// every replica, against state every replica has, so a zombie writer of an
// older attempt is refused everywhere, across leader changes and restarts.
//
// Run snapshots are "$snapshot" events in the system stream "$snapshots":
// the run's folded state (client/train) as of one event of the run
// ("Covers"), written by the leader (server/runsnap.go). The FSM keeps a
// small per-run index of them (RunInfo.Snapshots), so "the latest
// snapshot at or before offset / step / time X" is a lookup, not a scan.
//
// Both are records in the log and the FSM derives RunInfo from the
// records alone (applyBatch), like Streams and Producers: a restarted
// node, a node installing a snapshot and a restored backup all rebuild
// the same index.
//
// Event types beginning with '$' are reserved: the server refuses them
// from clients, and apply accepts "$fence" only as the single event of an
// op and "$snapshot" only as the single event of an op on "$snapshots".

// Frozen names of the system events and stream.
const (
	FenceType      = "$fence"
	SnapshotType   = "$snapshot"
	SnapshotStream = "$snapshots"
)

// Snapshot index bounds per run: the newest RunSnapshotKeep are always
// kept; older ones are kept one per Spacing snapshots (Seq a multiple of
// Spacing), and Spacing doubles whenever the index would hold more than
// RunSnapshotMax. So the index stays bounded (at most RunSnapshotMax,
// about 16 KiB) while the kept snapshots stay evenly spread over the
// whole run, and time travel to any point folds at most Spacing snapshot
// intervals. Changing them changes which snapshots replicas index: they
// are frozen like a format (every replica must thin the same way).
const (
	RunSnapshotKeep = 16
	RunSnapshotMax  = 256
)

// RunInfo is what the FSM knows of one run. Frozen: a msgpack array.
type RunInfo struct {
	_msgpack    struct{} `msgpack:",as_array"`
	Generation  uint64
	FenceOffset uint64 // offset of the newest "$fence" event
	FenceTime   int64  // its timestamp, unix nanoseconds
	FenceToken  string // the newest fence's idempotency token ("" if none)
	Taken       uint64 // snapshots of the run indexed so far (thinned or not)
	Spacing     uint64 // older snapshots are kept when Seq % Spacing == 0 (0: all)
	Snapshots   []RunSnapshotRef
}

// RunSnapshotRef indexes one run snapshot. Frozen: a msgpack array.
type RunSnapshotRef struct {
	_msgpack    struct{} `msgpack:",as_array"`
	Seq         uint64   // 1-based number among the run's snapshots
	Offset      uint64   // offset of the "$snapshot" event
	Covers      uint64   // offset of the last run event folded into it
	Step        uint64   // highest step folded
	Time        int64    // timestamp of the event at Covers
	Events      uint64   // run events folded
	Batches     uint64
	FoldVersion uint16
}

func (r *RunInfo) clone() *RunInfo {
	c := *r
	c.Snapshots = slices.Clone(r.Snapshots)
	return &c
}

// addSnapshot indexes ref and thins the index (see RunSnapshotMax).
func (r *RunInfo) addSnapshot(ref RunSnapshotRef) {
	r.Taken++
	ref.Seq = r.Taken
	r.Snapshots = append(r.Snapshots, ref)
	// The snapshot that just left the newest RunSnapshotKeep stays only
	// if it falls on the spacing.
	if i := len(r.Snapshots) - RunSnapshotKeep - 1; i >= 0 && r.Spacing > 1 && r.Snapshots[i].Seq%r.Spacing != 0 {
		r.Snapshots = slices.Delete(r.Snapshots, i, i+1)
	}
	for len(r.Snapshots) > RunSnapshotMax {
		r.Spacing = max(2, r.Spacing*2)
		old := r.Snapshots[:len(r.Snapshots)-RunSnapshotKeep]
		kept := old[:0]
		for _, s := range old {
			if s.Seq%r.Spacing == 0 {
				kept = append(kept, s)
			}
		}
		r.Snapshots = append(kept, r.Snapshots[len(old):]...)
	}
}

// RunSnapshot is the payload of a "$snapshot" event. State is the run's
// folded state as client/train encodes it, Hash its state hash.
// Frozen: a msgpack array in field order.
type RunSnapshot struct {
	_msgpack    struct{} `msgpack:",as_array"`
	Run         string
	FoldVersion uint16
	Generation  uint64
	Covers      uint64
	Step        uint64
	Time        int64
	Events      uint64
	Batches     uint64
	Hash        []byte
	State       []byte
}

// Ref is the index entry of s, stored at offset.
func (s *RunSnapshot) Ref(offset uint64) RunSnapshotRef {
	return RunSnapshotRef{Offset: offset, Covers: s.Covers, Step: s.Step, Time: s.Time, Events: s.Events, Batches: s.Batches, FoldVersion: s.FoldVersion}
}

// EncodeRunSnapshot is the payload of a "$snapshot" event.
func EncodeRunSnapshot(s *RunSnapshot) ([]byte, error) { return msgpack.Marshal(s) }

// DecodeRunSnapshot parses a "$snapshot" payload strictly.
func DecodeRunSnapshot(b []byte) (*RunSnapshot, error) {
	var s RunSnapshot
	rd := bytes.NewReader(b) // a ByteScanner: the decoder reads no further than it needs
	if err := msgpack.NewDecoder(rd).Decode(&s); err != nil {
		return nil, invalidf("run snapshot: %v", err)
	}
	if rd.Len() != 0 {
		return nil, invalidf("run snapshot: trailing bytes")
	}
	if s.Run == "" {
		return nil, invalidf("run snapshot names no run")
	}
	return &s, nil
}

// Fence is the payload of a "$fence" event. Frozen: msgpack array
// (Generation, Reason) or (Generation, Reason, Token); client/train
// decodes the same bytes. Token, when not empty, makes StartRun
// idempotent: a fence whose token is the run's newest fence's token is a
// retry of that fence and changes nothing (checkRun).
type Fence struct {
	Generation uint64
	Reason     string
	Token      string
}

// EncodeFence is the payload of a "$fence" event: the 2-element form
// when there is no token.
func EncodeFence(f Fence) []byte {
	e := msgpack.GetEncoder()
	defer msgpack.PutEncoder(e)
	var buf bytes.Buffer
	e.Reset(&buf)
	n := 2
	if f.Token != "" {
		n = 3
	}
	err := e.EncodeArrayLen(n)
	if err == nil {
		err = e.EncodeUint(f.Generation)
	}
	if err == nil {
		err = e.EncodeString(f.Reason)
	}
	if err == nil && n == 3 {
		err = e.EncodeString(f.Token)
	}
	if err != nil {
		panic(err) // a uint64 and strings always encode into memory
	}
	return buf.Bytes()
}

// DecodeFence parses a "$fence" payload strictly.
func DecodeFence(b []byte) (Fence, error) {
	var f Fence
	rd := bytes.NewReader(b) // a ByteScanner: the decoder reads no further than it needs
	d := msgpack.NewDecoder(rd)
	n, err := arrayLen(d, "fence", 2, 3)
	if err == nil {
		f.Generation, err = d.DecodeUint64()
	}
	if err == nil {
		f.Reason, err = d.DecodeString()
	}
	if err == nil && n == 3 {
		f.Token, err = d.DecodeString()
	}
	if err != nil {
		return Fence{}, invalidf("fence: %v", err)
	}
	if rd.Len() != 0 || f.Generation == 0 {
		return Fence{}, invalidf("fence: malformed payload")
	}
	return f, nil
}

// generation is a stream's run generation as this entry sees it.
func (e *entry) generation(st *State, stream string) uint64 {
	if g, ok := e.gens[stream]; ok {
		return g
	}
	if r := st.Runs[stream]; r != nil {
		return r.Generation
	}
	return 0
}

// fenceToken is the token of a stream's newest fence as this entry sees it.
func (e *entry) fenceToken(st *State, stream string) string {
	if t, ok := e.tokens[stream]; ok {
		return t
	}
	if r := st.Runs[stream]; r != nil {
		return r.FenceToken
	}
	return ""
}

// checkRun applies the run rules to op: fences, run snapshots and the
// generation every append to a run must carry.
func checkRun(st *State, e *entry, op *AppendOp) error {
	for i := range op.Events {
		ev := &op.Events[i]
		if (ev.Type == FenceType || ev.Type == SnapshotType || ev.Stream == SnapshotStream) && len(op.Events) != 1 {
			return invalidf("event %d: %s events are written alone", i, ev.Type)
		}
	}
	ev := &op.Events[0]
	switch {
	case ev.Type == FenceType:
		f, err := DecodeFence(ev.Payload)
		if err != nil {
			return err
		}
		cur, token := e.generation(st, ev.Stream), e.fenceToken(st, ev.Stream)
		if f.Token != "" && f.Token == token {
			return &FencedError{Run: ev.Stream, Have: op.Generation, Current: cur, Fencing: true, Retry: true}
		}
		if f.Generation != cur+1 || op.Generation != f.Generation {
			return &FencedError{Run: ev.Stream, Have: op.Generation, Current: cur, Fencing: true}
		}
		if e.gens == nil {
			e.gens, e.tokens = map[string]uint64{}, map[string]string{}
		}
		e.gens[ev.Stream], e.tokens[ev.Stream] = f.Generation, f.Token
		return nil
	case ev.Type == SnapshotType || ev.Stream == SnapshotStream:
		if ev.Type != SnapshotType || ev.Stream != SnapshotStream {
			return invalidf("%s events go only to %s", SnapshotType, SnapshotStream)
		}
		s, err := DecodeRunSnapshot(ev.Payload)
		if err != nil {
			return err
		}
		r := st.Runs[s.Run]
		if r == nil {
			return invalidf("run snapshot of %q, which is not a run", s.Run)
		}
		last, ok := e.snapCovers[s.Run]
		if !ok && len(r.Snapshots) > 0 {
			last, ok = r.Snapshots[len(r.Snapshots)-1].Covers, true
		}
		if s.Covers >= st.NextOffset || (ok && s.Covers <= last) {
			return invalidf("run snapshot of %q covers offset %d: not after the previous one and before the log's end", s.Run, s.Covers)
		}
		if e.snapCovers == nil {
			e.snapCovers = map[string]uint64{}
		}
		e.snapCovers[s.Run] = s.Covers
		return nil
	}
	for i := range op.Events {
		stream := op.Events[i].Stream
		if i > 0 && stream == op.Events[i-1].Stream {
			continue
		}
		cur := e.generation(st, stream)
		if cur == 0 && op.Generation == 0 {
			continue
		}
		if cur == 0 {
			return &FencedError{Run: stream, Have: op.Generation, NotARun: true}
		}
		if op.Generation != cur {
			return &FencedError{Run: stream, Have: op.Generation, Current: cur}
		}
	}
	return nil
}

// applyRunRecord rolls RunInfo forward over one system record. Records
// that apply did not accept are never written, so nothing here fails; a
// payload that does not decode (impossible short of corruption, which the
// batch CRC catches) is ignored alike on every replica.
func (s *State) applyRunRecord(stream, typ string, payload []byte, offset uint64, ts int64) {
	switch typ {
	case FenceType:
		f, err := DecodeFence(payload)
		if err != nil {
			return
		}
		r := s.Runs[stream]
		if r == nil {
			r = &RunInfo{}
			s.Runs[stream] = r
		}
		r.Generation, r.FenceOffset, r.FenceTime, r.FenceToken = f.Generation, offset, ts, f.Token
	case SnapshotType:
		if stream != SnapshotStream {
			return
		}
		snap, err := DecodeRunSnapshot(payload)
		if err != nil {
			return
		}
		if r := s.Runs[snap.Run]; r != nil {
			r.addSnapshot(snap.Ref(offset))
		}
	}
}

// RunEntry is one run in a listing.
type RunEntry struct {
	Name string
	RunInfo
	Stream StreamState
}

// Run returns a copy of what the FSM knows of run name.
func (p *Processor) Run(name string) (RunEntry, bool) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	r := p.mu.state.Runs[name]
	if r == nil {
		return RunEntry{}, false
	}
	e := RunEntry{Name: name, RunInfo: *r.clone()}
	if st := p.mu.state.Streams[name]; st != nil {
		e.Stream = *st
	}
	return e, true
}

// ListRuns returns up to limit runs whose names start with prefix and sort
// after `after`, in name order, and whether more follow.
func (p *Processor) ListRuns(prefix, after string, limit int) ([]RunEntry, bool) {
	p.mu.RLock()
	names := make([]string, 0, len(p.mu.state.Runs))
	for name := range p.mu.state.Runs {
		if strings.HasPrefix(name, prefix) && name > after {
			names = append(names, name)
		}
	}
	p.mu.RUnlock()
	sort.Strings(names)
	more := len(names) > limit
	if more {
		names = names[:limit]
	}
	out := make([]RunEntry, 0, len(names))
	for _, name := range names {
		if e, ok := p.Run(name); ok {
			out = append(out, e)
		}
	}
	return out, more
}

// SnapshotKey selects what a run snapshot lookup compares.
type SnapshotKey int

const (
	ByOffset SnapshotKey = iota // RunSnapshotRef.Covers
	ByStep                      // RunSnapshotRef.Step (the highest step folded)
	ByTime                      // RunSnapshotRef.Time, unix nanoseconds
)

// RunSnapshotAt returns the newest indexed snapshot of run whose key is at
// or before x and whose fold version is foldVersion (0: any).
func (p *Processor) RunSnapshotAt(run string, key SnapshotKey, x uint64, foldVersion uint16) (RunSnapshotRef, bool) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	r := p.mu.state.Runs[run]
	if r == nil {
		return RunSnapshotRef{}, false
	}
	for i := len(r.Snapshots) - 1; i >= 0; i-- {
		s := r.Snapshots[i]
		if foldVersion != 0 && s.FoldVersion != foldVersion {
			continue
		}
		var k uint64
		switch key {
		case ByOffset:
			k = s.Covers
		case ByStep:
			k = s.Step
		case ByTime:
			k = uint64(s.Time)
		}
		if k <= x {
			return s, true
		}
	}
	return RunSnapshotRef{}, false
}

// FencedError: an append to a run carried a generation other than the
// run's current one, or a fence raced with another.
type FencedError struct {
	Run     string
	Have    uint64 // the generation the op carried
	Current uint64 // the run's generation
	Fencing bool   // the op was itself a fence that lost a race
	Retry   bool   // ... or a retry of the newest fence (same token): it is at Current
	NotARun bool   // the op carried a generation for a stream that is not a run
}

func (e *FencedError) Error() string {
	switch {
	case e.NotARun:
		return fmt.Sprintf("stream %q is not a run (never started), but the append carries generation %d", e.Run, e.Have)
	case e.Fencing:
		return fmt.Sprintf("run %q: fence to generation %d lost a race: the run is at generation %d", e.Run, e.Have, e.Current)
	}
	return fmt.Sprintf("run %q: append of generation %d is fenced: the run is at generation %d (a newer job attempt started)", e.Run, e.Have, e.Current)
}
func (e *FencedError) Unwrap() error { return ErrFenced }
