package fsm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tsstore/tsstore/record"
	"github.com/tsstore/tsstore/segment"
)

// Config configures a Processor.
type Config struct {
	// Dir holds the segment log (Dir/log), the checkpoint and the node table.
	Dir string
	// Segment configures the segment log.
	Segment segment.Options
	// Logger receives recovery and failure reports; nil discards them.
	Logger *slog.Logger
	// OnFail, if set, is called once when the processor stops applying
	// because of a storage failure.
	OnFail func(error)
	// OnHold, if set, is told how long compaction, retention and tiering
	// held up the apply path, section by section, each time they did:
	// "apply" (applying a SetRetention, Compact, Thin, DeleteStream or
	// SegmentTiered entry, which the entries behind it wait for),
	// "worker_sync" (the compaction worker's log fsync before it
	// checkpoints a cut or rewrites, which holds the segment writer),
	// "publish" (a rewrite's renames and directory fsync, which a
	// snapshot being taken on the apply goroutine waits for) and the
	// segment log's "drop" and "swap" (Segment.OnHold, set to this unless
	// set already).
	OnHold func(section string, held time.Duration)
}

// DefaultConfig returns a Config for dir with default segment options.
func DefaultConfig(dir string) Config {
	return Config{Dir: dir, Segment: segment.DefaultOptions()}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if c.Dir == "" {
		return fmt.Errorf("fsm: Dir is required")
	}
	return c.Segment.Validate()
}

// AppendResult is the outcome of one AppendOp.
type AppendResult struct {
	FirstOffset    uint64
	LastOffset     uint64
	RaftIndex      uint64
	Timestamp      int64
	Duplicate      bool
	StreamVersions map[string]uint64
	Err            error
}

// ApplyResult is what Apply returns for one Raft entry. Err is set when the
// whole entry failed (storage failure, unknown command); otherwise each op
// has its own result.
type ApplyResult struct {
	Appends []AppendResult
	Skipped bool // the entry was already applied before a restart
	Err     error
}

// Processor decodes and applies commands to the segment log and the state.
// It is the whole FSM without Raft: tests and tools drive it directly.
//
// Apply, Snapshot and Restore are called from one goroutine (Raft's FSM
// goroutine); every other method is safe for concurrent use.
type Processor struct {
	cfg    Config
	logger *slog.Logger

	// logMu guards the log pointer, which Restore swaps. Readers hold it
	// shared for the duration of one read.
	logMu sync.RWMutex
	log   *segment.Log

	mu struct {
		sync.RWMutex
		state *State
	}

	// Owned by the apply goroutine.
	appendWM  uint64 // append commands at or below this index are in the log
	nodesWM   uint64 // node commands at or below this index are in the node table
	batches   batcher
	lastSweep int64 // log timestamp of the last sweepProducers
	// retention commands at or below this index are in the state (the
	// checkpoint's index: later ones are applied again after a restart,
	// which they allow: setting a policy or a cut twice is setting it once)
	retentionWM uint64

	// drops holds back the files of dropped segments while snapshots that
	// may link them are written (retention.go).
	drops struct {
		sync.Mutex
		pins    int
		job     *cutJob       // the newest cut not checkpointed yet
		safe    uint64        // a durable checkpoint keeps offsets from here: files below may go
		dropped uint64        // files below it are gone
		gen     uint64        // bumped when the log is replaced (Restore)
		changed chan struct{} // closed when dropped moves
		// dropping: a dropLocked is dropping files (without the lock).
		dropping bool
	}
	// thin is the rewrite side of the cut worker (thin.go).
	thin struct {
		mu     sync.Mutex
		state  *Retention        // durable (checkpointed) rewrites to make
		failed map[uint64]uint32 // base -> committed digest a rewrite did not reach
		stats  ThinStats
		// pub is held while a rewrite is published; pin takes it, so a
		// snapshot never lists a segment mid-swap, and pinned (snapshots
		// being written) refuses publishing.
		pub    sync.Mutex
		pinned atomic.Int64
	}
	// cuts is the cut worker (cuts.go).
	cuts struct {
		wake, quit, done chan struct{}
		stop             sync.Once
	}
	// cpNext is the NextOffset of the newest durable checkpoint: a
	// restart rebuilds the state by scanning the log from there, so it
	// never reads the segments below it (CheckpointedOffset).
	cpNext atomic.Uint64
	// cpMu serializes checkpoint writes; cpIndex is the newest written, so
	// an older one (a snapshot persisted after a cut's) never replaces it.
	cpMu    sync.Mutex
	cpIndex uint64

	applied    atomic.Uint64
	nextOffset atomic.Uint64
	// failed is the sticky storage error; written by the apply goroutine,
	// read by any (Failed, waiters).
	failed atomic.Pointer[error]

	notifyMu sync.Mutex
	notifyCh chan struct{}

	// names caches the sorted stream names for ListStreams. Streams are
	// never deleted, so a length change means the cache is stale.
	namesMu sync.Mutex
	names   []string
}

// Open opens or creates the processor's storage and rebuilds its state
// from the last checkpoint plus the log written after it.
func Open(cfg Config) (*Processor, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Segment.OnHold == nil {
		cfg.Segment.OnHold = cfg.OnHold
	}
	p := &Processor{cfg: cfg, logger: cfg.Logger, notifyCh: make(chan struct{})}
	if p.logger == nil {
		p.logger = slog.New(slog.DiscardHandler)
	}
	log, err := segment.Open(filepath.Join(cfg.Dir, "log"), cfg.Segment)
	if err != nil {
		return nil, err
	}
	if err := p.load(log); err != nil {
		log.Close()
		return nil, err
	}
	p.startCuts()
	p.wakeCuts() // rewrites a crash or restart left to do
	return p, nil
}

func (p *Processor) load(log *segment.Log) error {
	cp, err := p.readOrRebuildCheckpoint(log)
	if err != nil {
		return err
	}
	st := cp.State
	if st == nil {
		st = newState()
	}
	p.cpNext.Store(st.NextOffset) // before the scan below moves st on
	if log.NextOffset() < st.NextOffset {
		return fmt.Errorf("%w: %s ends at offset %d but the checkpoint at raft index %d covers offsets up to %d; wipe this node's data directory and let it rejoin from a peer",
			ErrDataLoss, log.Dir(), log.NextOffset(), cp.Index, st.NextOffset)
	}
	if st.NextOffset < log.FirstOffset() {
		return fmt.Errorf("%w: checkpoint ends at offset %d, before the first stored offset %d", ErrDataLoss, st.NextOffset, log.FirstOffset())
	}
	if st.NextOffset < log.NextOffset() {
		// The state is a function of the log as appended; a batch run
		// compaction thinned (fewer records than its span) no longer
		// holds all of it. Thinning happens only below a durable
		// checkpoint's offsets, so this is a rebuild from a log that
		// lost its checkpoint: refuse rather than diverge.
		replay := func(b record.Batch) error {
			if h := b.Header(); !h.Complete() && !h.IsControl() {
				return fmt.Errorf("%w: the batch at offset %d was thinned by run compaction, so the state cannot be rebuilt from this log (checkpoint at raft index %d): wipe this node's data directory and let it rejoin from a peer",
					ErrDataLoss, h.BaseOffset, cp.Index)
			}
			return st.applyBatch(b)
		}
		if err := log.Scan(st.NextOffset, replay); err != nil {
			return fmt.Errorf("fsm: rebuilding state from %s: %w", log.Dir(), err)
		}
	}
	nodes, err := readNodes(p.cfg.Dir)
	if err != nil {
		return err
	}
	p.nodesWM = cp.Index
	if nodes.Index > cp.Index {
		st.Nodes, st.Members, p.nodesWM = nodes.Nodes, nodes.Members, nodes.Index
	}
	// Finish what a cut started: reads stop at it, and files a crash left
	// behind (or a snapshot held) go now.
	log.SetFirstOffset(st.Retention.FirstOffset)
	if _, err := log.DropSealedBefore(st.Retention.FirstOffset); err != nil {
		return fmt.Errorf("fsm: dropping segments below the first kept offset %d: %w", st.Retention.FirstOffset, err)
	}
	if err := p.syncManifest(log, st); err != nil {
		return fmt.Errorf("fsm: segment manifest of %s: %w", log.Dir(), err)
	}
	p.retentionWM, p.cpIndex = cp.Index, cp.Index
	p.resetDrops(st.Retention.FirstOffset)
	rs := st.Retention.clone()
	p.setThins(&rs)
	p.appendWM = cp.Index
	if h, ok := log.LastHeader(); ok && h.RaftIndex > p.appendWM {
		p.appendWM = h.RaftIndex
	}
	p.log = log
	p.mu.state = st
	p.applied.Store(max(p.appendWM, p.nodesWM))
	p.nextOffset.Store(st.NextOffset)
	p.logger.Info("fsm opened", "dir", p.cfg.Dir, "checkpoint_index", cp.Index,
		"append_watermark", p.appendWM, "next_offset", st.NextOffset,
		"recovery", log.Recovery())
	for _, m := range log.Recovery().FetchedIndexes {
		p.logger.Info("tiering: a tiered segment's lost index files were fetched from its index bundle in the tier target", "marker", m)
	}
	for _, why := range log.Recovery().IndexBundleFailures {
		p.logger.Warn("tiering: a tiered segment's lost index files were rebuilt from its whole object; its index bundle was not used", "why", why)
	}
	return nil
}

// readOrRebuildCheckpoint reads the checkpoint. A damaged one (bit rot, a
// bad disk block) is moved aside and the state rebuilt from the whole log,
// of which it is a pure function: the node starts, slower once, instead of
// failing at every restart. That needs the log from offset 0.
func (p *Processor) readOrRebuildCheckpoint(log *segment.Log) (checkpoint, error) {
	cp, err := readCheckpoint(p.cfg.Dir)
	if err == nil || !errors.Is(err, record.ErrCorrupt) {
		return cp, err
	}
	path := filepath.Join(p.cfg.Dir, checkpointName)
	if log.FirstOffset() > 0 {
		return cp, fmt.Errorf("%w: %v; the log starts at offset %d, so the state cannot be rebuilt from it: wipe this node's data directory and let it rejoin from a peer (docs/operations.md, Damaged FSM files)",
			ErrDataLoss, err, log.FirstOffset())
	}
	aside := fmt.Sprintf("%s.damaged-%d", path, time.Now().UnixNano())
	if rerr := os.Rename(path, aside); rerr != nil {
		return cp, fmt.Errorf("%v; moving it aside: %w", err, rerr)
	}
	p.logger.Error("fsm checkpoint damaged; moved aside, rebuilding the state from the whole log", "error", err, "moved_to", aside,
		"log_next_offset", log.NextOffset())
	return checkpoint{}, nil
}

// Close finishes the queued cut work and closes the segment log.
func (p *Processor) Close() error {
	p.stopCuts()
	p.logMu.Lock()
	defer p.logMu.Unlock()
	if p.log == nil {
		return nil
	}
	err := p.log.Close()
	p.log = nil
	return err
}

// CheckpointedOffset is the NextOffset of the newest durable checkpoint:
// a restart rebuilds the state from the log from this offset on, so it
// never reads a segment below it. A node evicts a tiered segment only
// below it (server/tier_evict.go), or every restart would read the
// evicted segments back from the store, and could not start while one
// is damaged or the store is down.
func (p *Processor) CheckpointedOffset() uint64 { return p.cpNext.Load() }

// AppliedIndex is the last Raft index applied (or skipped as applied).
func (p *Processor) AppliedIndex() uint64 { return p.applied.Load() }

// NextOffset is the offset the next appended event will get.
func (p *Processor) NextOffset() uint64 { return p.nextOffset.Load() }

// Failed returns the sticky storage error, if the processor has stopped.
func (p *Processor) Failed() error {
	if e := p.failed.Load(); e != nil {
		return *e
	}
	return nil
}

// WithLog runs fn with the current segment log held against Restore.
func (p *Processor) WithLog(fn func(*segment.Log) error) error {
	p.logMu.RLock()
	defer p.logMu.RUnlock()
	if p.log == nil {
		return segment.ErrClosed
	}
	return fn(p.log)
}

// Nodes returns a copy of the node table (id -> client API address).
func (p *Processor) Nodes() map[string]string {
	p.mu.RLock()
	defer p.mu.RUnlock()
	out := make(map[string]string, len(p.mu.state.Nodes))
	for k, v := range p.mu.state.Nodes {
		out[k] = v
	}
	return out
}

// LastTimestamp is the timestamp of the last batch, unix nanoseconds.
func (p *Processor) LastTimestamp() int64 {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.mu.state.LastTimestamp
}

// StreamInfo returns a copy of one stream's state.
func (p *Processor) StreamInfo(name string) (StreamState, bool) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	st, ok := p.mu.state.Streams[name]
	if !ok {
		return StreamState{}, false
	}
	return *st, true
}

// Changed returns a channel that is closed when the next entry is applied.
// Take it before checking a condition, then wait on it, to never miss one.
func (p *Processor) Changed() <-chan struct{} {
	p.notifyMu.Lock()
	defer p.notifyMu.Unlock()
	return p.notifyCh
}

func (p *Processor) notify() {
	p.notifyMu.Lock()
	close(p.notifyCh)
	p.notifyCh = make(chan struct{})
	p.notifyMu.Unlock()
}

// WaitApplied blocks until AppliedIndex() >= index or ctx ends.
func (p *Processor) WaitApplied(ctx context.Context, index uint64) error {
	return p.wait(ctx, func() bool { return p.applied.Load() >= index })
}

// WaitNextOffset blocks until NextOffset() >= next or ctx ends.
func (p *Processor) WaitNextOffset(ctx context.Context, next uint64) error {
	return p.wait(ctx, func() bool { return p.nextOffset.Load() >= next })
}

func (p *Processor) wait(ctx context.Context, done func() bool) error {
	for {
		ch := p.Changed()
		if done() {
			return nil
		}
		if err := p.Failed(); err != nil {
			return err
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Apply applies one Raft entry. It is deterministic: the same entries in
// the same order produce the same log bytes and state on every replica.
// Entries at or below the durable watermarks are skipped, which makes
// re-application after a restart idempotent.
func (p *Processor) Apply(index uint64, data []byte) *ApplyResult {
	res := p.apply(index, data)
	p.applied.Store(index)
	p.notify()
	return res
}

// ApplyNonCommand records that the Raft entry at index, which carries no
// command for the FSM (a configuration change), has been applied.
func (p *Processor) ApplyNonCommand(index uint64) {
	if index > p.applied.Load() {
		p.applied.Store(index)
	}
	p.notify()
}

func (p *Processor) apply(index uint64, data []byte) *ApplyResult {
	if err := p.Failed(); err != nil {
		return &ApplyResult{Err: err}
	}
	if len(data) == 0 {
		return p.fail(fmt.Errorf("%w: empty entry at index %d", ErrUnknownCommand, index))
	}
	switch CommandType(data[0]) {
	case CmdSetRetention, CmdCompact, CmdThin, CmdDeleteStream, CmdSegmentTiered:
		defer p.observeHold("apply", time.Now())
	}
	switch CommandType(data[0]) {
	case CmdAppend:
		if index <= p.appendWM {
			return &ApplyResult{Skipped: true}
		}
		var cmd AppendCommand
		if err := decodeAppend(data, &cmd); err != nil {
			return p.fail(fmt.Errorf("entry %d: %w", index, err))
		}
		return p.applyAppend(index, &cmd)
	case CmdRegisterNode:
		if index <= p.nodesWM {
			return &ApplyResult{Skipped: true}
		}
		var cmd RegisterNodeCommand
		if err := decode(data, &cmd); err != nil {
			return p.fail(fmt.Errorf("entry %d: %w", index, err))
		}
		return p.applyRegisterNode(index, &cmd)
	case CmdRemoveNode:
		if index <= p.nodesWM {
			return &ApplyResult{Skipped: true}
		}
		var cmd RemoveNodeCommand
		if err := decode(data, &cmd); err != nil {
			return p.fail(fmt.Errorf("entry %d: %w", index, err))
		}
		return p.applyRemoveNode(index, &cmd)
	case CmdSetRetention:
		if index <= p.retentionWM {
			return &ApplyResult{Skipped: true}
		}
		var cmd SetRetentionCommand
		if err := decode(data, &cmd); err != nil {
			return p.fail(fmt.Errorf("entry %d: %w", index, err))
		}
		return p.applySetRetention(index, &cmd)
	case CmdCompact:
		if index <= p.retentionWM {
			return &ApplyResult{Skipped: true}
		}
		var cmd CompactCommand
		if err := decode(data, &cmd); err != nil {
			return p.fail(fmt.Errorf("entry %d: %w", index, err))
		}
		return p.applyCompact(index, &cmd)
	case CmdThin:
		if index <= p.retentionWM {
			return &ApplyResult{Skipped: true}
		}
		var cmd ThinCommand
		if err := decode(data, &cmd); err != nil {
			return p.fail(fmt.Errorf("entry %d: %w", index, err))
		}
		return p.applyThin(index, &cmd)
	case CmdDeleteStream:
		if index <= p.retentionWM {
			return &ApplyResult{Skipped: true}
		}
		var cmd DeleteStreamCommand
		if err := decode(data, &cmd); err != nil {
			return p.fail(fmt.Errorf("entry %d: %w", index, err))
		}
		return p.applyDeleteStream(index, &cmd)
	case CmdSegmentTiered:
		if index <= p.retentionWM {
			return &ApplyResult{Skipped: true}
		}
		var cmd SegmentTieredCommand
		if err := decode(data, &cmd); err != nil {
			return p.fail(fmt.Errorf("entry %d: %w", index, err))
		}
		return p.applySegmentTiered(index, &cmd)
	default:
		// A command from a newer version: applying around it would make
		// this replica diverge, so stop and ask for an upgrade.
		return p.fail(fmt.Errorf("%w: type %d at index %d (upgrade this node)", ErrUnknownCommand, data[0], index))
	}
}

// observeHold reports to Config.OnHold that section held the apply path
// from start until now.
func (p *Processor) observeHold(section string, start time.Time) {
	if p.cfg.OnHold != nil {
		p.cfg.OnHold(section, time.Since(start))
	}
}

// fail makes the processor refuse all further entries. The node must
// restart; the Raft log still holds every entry not yet in the segments.
func (p *Processor) fail(err error) *ApplyResult {
	ferr := fmt.Errorf("%w: %w", ErrStorageFailed, err)
	p.failed.Store(&ferr)
	p.logger.Error("fsm stopped applying", "error", ferr)
	if p.cfg.OnFail != nil {
		p.cfg.OnFail(ferr)
	}
	return &ApplyResult{Err: ferr}
}
