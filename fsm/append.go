package fsm

import (
	"fmt"
	"time"

	"github.com/tsstore/tsstore/record"
)

// entry is the scratch state of one Raft entry being applied: the
// versions and producer positions its earlier ops have already claimed.
type entry struct {
	versions map[string]uint64
	seqs     map[string]uint64
	windows  map[string][]pendingWindow
	// ts is the entry's (clamped) timestamp, ttl its ProducerTTL.
	ts, ttl int64
	// gens, tokens and snapCovers are the run generations fenced and
	// the run snapshots indexed by the entry's earlier ops (runs.go);
	// nil until an op of the entry fences or snapshots a run.
	gens       map[string]uint64
	tokens     map[string]string
	snapCovers map[string]uint64
}

type pendingWindow struct {
	firstSeq, lastSeq uint64
	op                int
}

func (e *entry) version(st *State, stream string) uint64 {
	if v, ok := e.versions[stream]; ok {
		return v
	}
	return st.streamVersion(stream)
}

func (e *entry) lastSeq(st *State, producer string) uint64 {
	if v, ok := e.seqs[producer]; ok {
		return v
	}
	if p := st.Producers[producer]; p != nil && !p.expired(e.ts, e.ttl) {
		return p.LastSeq
	}
	return 0
}

func (p *Processor) applyAppend(index uint64, cmd *AppendCommand) *ApplyResult {
	// The state is only read here, and only this goroutine writes it.
	st := p.mu.state
	ts := max(cmd.Timestamp, st.LastTimestamp)
	for i := range cmd.Ops {
		if op := &cmd.Ops[i]; op.HasEventSum && SumEvents(op.Events) != op.EventSum {
			// Deciding the op would depend on bytes another replica does
			// not have; stop before anything of the entry is written.
			return p.fail(fmt.Errorf("%w: entry %d, op %d (producer %q, sequence %d): the events sum to %08x, the producer's checksum is %08x",
				ErrChecksumMismatch, index, i, op.ProducerID, op.Seq, SumEvents(op.Events), op.EventSum))
		}
	}
	p.batches.reset(st.NextOffset, index, ts, cmd.Compression)
	e := entry{versions: map[string]uint64{}, seqs: map[string]uint64{}, windows: map[string][]pendingWindow{}, ts: ts, ttl: cmd.ProducerTTL}
	results := make([]AppendResult, len(cmd.Ops))
	for i := range cmd.Ops {
		results[i] = p.applyOp(st, &e, cmd.Ops, results, i, index, ts)
	}
	if p.batches.added > 0 {
		if r := p.commitEntry(index); r != nil {
			return r
		}
	}
	p.sweepProducers(ts, cmd.ProducerTTL)
	for i := range results {
		if results[i].Err == nil && results[i].Duplicate && results[i].StreamVersions == nil {
			results[i].StreamVersions = p.versionsAt(results[i].FirstOffset, results[i].LastOffset)
		}
	}
	return &ApplyResult{Appends: results}
}

// commitEntry writes the entry's batches and rolls the state over them. A
// non-nil result means the processor has failed.
func (p *Processor) commitEntry(index uint64) *ApplyResult {
	batches, err := p.batches.finish()
	if err != nil {
		return p.fail(err)
	}
	if err := p.log.AppendEntry(batches...); err != nil {
		return p.fail(err)
	}
	if p.log.ActiveBase() > p.manifestEnd() {
		// The entry rolled the log: the sealed segment joins the manifest.
		if err := p.syncManifest(p.log, p.mu.state); err != nil {
			return p.fail(err)
		}
	}
	p.mu.Lock()
	for _, b := range batches {
		if err = p.mu.state.applyBatch(b); err != nil {
			break
		}
	}
	p.mu.Unlock()
	if err != nil {
		return p.fail(err)
	}
	p.nextOffset.Store(p.mu.state.NextOffset)
	p.appendWM = index
	return nil
}

func (p *Processor) applyOp(st *State, e *entry, ops []AppendOp, results []AppendResult, i int, index uint64, ts int64) AppendResult {
	op := &ops[i]
	if err := ValidateOp(op); err != nil {
		return AppendResult{Err: err}
	}
	n := uint64(len(op.Events))
	if op.ProducerID != "" {
		last := e.lastSeq(st, op.ProducerID)
		if op.Seq <= last {
			return p.duplicate(st, e, ops, results, i)
		}
	}
	if err := checkRun(st, e, op); err != nil {
		return AppendResult{Err: err}
	}
	if op.ProducerID != "" {
		last := e.lastSeq(st, op.ProducerID)
		if op.Seq != last+1 {
			return AppendResult{Err: &SequenceGapError{Producer: op.ProducerID, Expected: last + 1, Got: op.Seq}}
		}
	}
	for _, x := range op.Expect {
		if err := checkExpectation(x, e.version(st, x.Stream)); err != nil {
			return AppendResult{Err: err}
		}
	}
	bld := p.batches.begin(opStream(op))
	size := bld.Len()
	for j := range op.Events {
		size += record.RecordSize(eventRecord(&op.Events[j], 0, op), uint64(bld.Count()+j))
	}
	if size > record.MaxBatchSize {
		return AppendResult{Err: invalidf("append of %d bytes does not fit in one batch (%d)", size, record.MaxBatchSize)}
	}
	first := p.batches.next()
	versions := make(map[string]uint64, 1)
	for j := range op.Events {
		ev := &op.Events[j]
		v := e.version(st, ev.Stream) + 1
		e.versions[ev.Stream] = v
		versions[ev.Stream] = v
		r := eventRecord(ev, v, op)
		r.ProducerSeq = op.Seq + uint64(j)
		if err := bld.Add(r); err != nil {
			// ValidateOp bounds every name, so this cannot happen; if it
			// does the batch is in an unknown state.
			panic(fmt.Sprintf("fsm: builder rejected a validated record: %v", err))
		}
	}
	p.batches.added += n
	if op.ProducerID != "" {
		e.seqs[op.ProducerID] = op.Seq + n - 1
		e.windows[op.ProducerID] = append(e.windows[op.ProducerID], pendingWindow{op.Seq, op.Seq + n - 1, i})
	}
	return AppendResult{FirstOffset: first, LastOffset: first + n - 1, RaftIndex: index, Timestamp: ts, StreamVersions: versions}
}

func eventRecord(ev *Event, version uint64, op *AppendOp) *record.Record {
	return &record.Record{
		StreamVersion: version,
		Stream:        []byte(ev.Stream),
		Type:          []byte(ev.Type),
		ProducerID:    []byte(op.ProducerID),
		ProducerSeq:   op.Seq,
		Metadata:      ev.Metadata,
		Payload:       ev.Payload,
	}
}

func checkExpectation(x Expectation, actual uint64) error {
	ok := true
	switch x.Kind {
	case ExpectNoStream:
		ok = actual == 0
	case ExpectStreamExists:
		ok = actual > 0
	case ExpectExact:
		ok = actual == x.Version
	}
	if ok {
		return nil
	}
	return &WrongExpectedVersionError{Stream: x.Stream, Expected: x.String(), Actual: actual}
}

// duplicate answers a retry of an op whose first sequence is already
// committed: with the original offsets if they are still known, an error
// otherwise. It never writes.
func (p *Processor) duplicate(st *State, e *entry, ops []AppendOp, results []AppendResult, i int) AppendResult {
	op := &ops[i]
	n := uint64(len(op.Events))
	lastNew := op.Seq + n - 1
	last := e.lastSeq(st, op.ProducerID)
	if lastNew > last {
		// Part of the op is new: the client re-sent with different events.
		return AppendResult{Err: &SequenceGapError{Producer: op.ProducerID, Expected: last + 1, Got: op.Seq}}
	}
	// A retry coalesced into the same entry as its original.
	for _, w := range e.windows[op.ProducerID] {
		if w.firstSeq == op.Seq && w.lastSeq == lastNew {
			r := results[w.op]
			r.Duplicate = true
			return r
		}
	}
	if ps := st.Producers[op.ProducerID]; ps != nil {
		for _, w := range ps.Windows {
			if w.FirstSeq <= op.Seq && lastNew <= w.LastSeq {
				first := w.FirstOffset + (op.Seq - w.FirstSeq)
				return AppendResult{FirstOffset: first, LastOffset: first + n - 1, RaftIndex: w.RaftIndex, Timestamp: w.Timestamp, Duplicate: true}
			}
		}
	}
	return AppendResult{Err: &DuplicateSequenceError{Producer: op.ProducerID, Seq: op.Seq, LastSeq: last}}
}

// sweepEvery is how much log time passes between sweeps of expired
// producers.
const sweepEvery = int64(time.Minute)

// sweepProducers forgets producers expired at ts, at most once per
// sweepEvery of log time: an expired producer is treated as unknown
// whether it is still in the table or not (state.go), so this only bounds
// memory and checkpoint size, and replicas may sweep at different times.
func (p *Processor) sweepProducers(ts, ttl int64) {
	if ttl <= 0 || ts-p.lastSweep < sweepEvery {
		return
	}
	p.lastSweep = ts
	p.mu.Lock()
	defer p.mu.Unlock()
	for id, ps := range p.mu.state.Producers {
		if ps.expired(ts, ttl) {
			delete(p.mu.state.Producers, id)
		}
	}
}
