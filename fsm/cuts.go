package fsm

import (
	"context"
	"fmt"
	"time"

	"github.com/tsstore/tsstore/segment"
)

// cutJob is a committed cut whose checkpoint is not written yet.
type cutJob struct {
	index uint64 // the raft index of the Compact or Thin entry
	// need is the offset a durable checkpoint must cover (its state's
	// NextOffset) before files go: the cut, or the end of a segment to
	// rewrite. The state is rebuilt at start from the checkpoint and the
	// log after it, which must not be below a cut or hold thinned batches.
	need uint64
	// state is the state right after the entry, for a checkpoint at
	// index; nil when the durable checkpoint covered need already, so
	// none is written (a crash then leaves the entry in Raft's log, past
	// the checkpoint, and start applies it again).
	state *State
	// retention is the retention state right after the entry: the
	// rewrites the worker must make.
	retention Retention
	cut       uint64 // 0 for a rewrite
}

// The cut worker makes committed cuts durable and drops their files, off
// the apply path (applyCompact only moves the state and the read floor):
//
//  1. sync the log and write a checkpoint at the cut's index (the state
//     is rebuilt at start from the checkpoint and the log after it, so no
//     file below the cut may go before a durable checkpoint covers the
//     cut); skipped when the durable checkpoint covers it already (a
//     snapshot's, usually: cuts concern old data), and then apply cloned
//     no state for it (queueCut);
//  2. drop the sealed segments below the cut, unless a snapshot being
//     written pins their files (Snapshot to Persist or Release).
//
// Appends wait only for step 1's log fsync (the log's writer lock). A
// crash before step 1 leaves the old checkpoint: Raft applies the cut
// again at start. So does a crash after a cut or rewrite that step 1
// skipped: Raft's log keeps every entry past the durable checkpoint, and
// the entry applies again to files already dropped or rewritten
// (TestCutAndRewriteCoveredByCheckpoint). A crash between 1 and 2 leaves
// files below the checkpoint's first kept offset: load drops them.
//
// Lock order: drops, then logMu (the worker and unpin drop under drops;
// Restore resets drops outside its logMu section).

// startCuts starts the worker; Close stops it.
func (p *Processor) startCuts() {
	p.cuts.wake = make(chan struct{}, 1)
	p.cuts.quit = make(chan struct{})
	p.cuts.done = make(chan struct{})
	go p.runCuts()
}

func (p *Processor) stopCuts() {
	p.cuts.stop.Do(func() {
		close(p.cuts.quit)
		<-p.cuts.done
	})
}

func (p *Processor) wakeCuts() {
	select {
	case p.cuts.wake <- struct{}{}:
	default:
	}
}

// queueCut hands the worker the Compact (cut > 0) or Thin entry applied
// at index, whose files may go once a durable checkpoint covers need.
// Apply goroutine, p.mu not held (it is the only writer of the state).
//
// The state is cloned for a checkpoint only when the durable one does
// not cover need yet (nor that of the job it replaces): the clone is
// O(streams + producers + runs) and appends wait for it, while cuts and
// rewrites mostly concern old segments that the last snapshot's
// checkpoint covers already.
func (p *Processor) queueCut(index, cut, need uint64) {
	p.drops.Lock()
	if old := p.drops.job; old != nil {
		// This job replaces it: it must do what that one was to do.
		cut, need = max(cut, old.cut), max(need, old.need)
	}
	p.drops.Unlock()
	job := &cutJob{index: index, cut: cut, need: need, retention: p.mu.state.Retention.clone()}
	if p.cpNext.Load() < need {
		job.state = p.mu.state.clone()
	}
	p.drops.Lock()
	if p.drops.job == nil || p.drops.job.index < job.index {
		p.drops.job = job
	}
	p.drops.Unlock()
	p.wakeCuts()
}

func (p *Processor) runCuts() {
	defer close(p.cuts.done)
	for {
		quit := false
		select {
		case <-p.cuts.wake:
		case <-p.cuts.quit:
			quit = true // finish what is queued first
		}
		p.cutOnce()
		if quit {
			return
		}
	}
}

// cutOnce writes the queued cut's checkpoint and drops what may go.
func (p *Processor) cutOnce() {
	p.drops.Lock()
	job, gen := p.drops.job, p.drops.gen
	p.drops.job = nil
	p.drops.Unlock()
	if job != nil && job.state != nil {
		err := p.WithLog(func(l *segment.Log) error {
			// Measured with its wait for the writer lock, so an upper
			// bound on how long it held appends.
			start := time.Now()
			err := l.Sync()
			p.observeHold("worker_sync", start)
			if err != nil {
				return err
			}
			return p.writeCheckpoint(checkpoint{Index: job.index, State: job.state}, false)
		})
		if err != nil {
			// The files stay (reads stop at the cut already); the next
			// cut or a restart, where Raft applies this one again, retries.
			p.logger.Error("retention: checkpoint at a cut failed; its segment files stay for now", "cut", job.cut, "index", job.index, "error", err)
		} else {
			job.state = nil // durable
		}
	}
	if job != nil && job.state == nil {
		p.drops.Lock()
		if gen == p.drops.gen {
			p.drops.safe = max(p.drops.safe, job.cut)
			p.setThins(&job.retention)
		}
		p.drops.Unlock()
	}
	p.drops.Lock()
	p.dropLocked()
	p.drops.Unlock()
	p.reconcileThins()
}

// pin keeps the files of dropped segments on disk while a snapshot that
// may link them is being written (Snapshot to Persist); unpin lets a
// pending drop go.
func (p *Processor) pin() {
	p.thin.pub.Lock()
	p.thin.pinned.Add(1)
	p.thin.pub.Unlock()
	p.drops.Lock()
	p.drops.pins++
	p.drops.Unlock()
}

func (p *Processor) unpin() {
	p.drops.Lock()
	p.drops.pins--
	p.dropLocked()
	p.drops.Unlock()
	if p.thin.pinned.Add(-1) == 0 {
		p.wakeCuts() // a rewrite may have waited for it
	}
}

// dropLocked drops the sealed segments below the safe cut unless pinned.
// It drops one segment at a time and does not hold p.drops across the
// unlinks and the directory fsync: pin, which a snapshot being taken
// calls on Raft's apply goroutine, would otherwise wait for every segment
// of a cut (a first cut can drop dozens), and appends with it. Releasing
// the lock is safe: a segment being dropped lies below the safe cut, so
// below the first kept offset of any state a snapshot can have captured,
// and Snapshot lists no such segment; once pinned, no further drop
// starts. Only one caller drops at a time (dropping); the others leave
// the rest to it, or to the next unpin or cut.
func (p *Processor) dropLocked() {
	if p.drops.dropping {
		return
	}
	p.drops.dropping = true
	defer func() { p.drops.dropping = false }()
	for p.drops.pins == 0 && p.drops.safe > p.drops.dropped {
		cut, gen := p.drops.safe, p.drops.gen
		p.drops.Unlock()
		d, done, err := p.dropOldest(cut)
		p.drops.Lock()
		if err != nil {
			// The files go at the next cut, unpin or restart.
			p.logger.Error("retention could not drop segment files", "cut", cut, "error", err)
			return
		}
		if d != nil {
			p.logger.Info("retention dropped a segment", "base_offset", d.BaseOffset, "next_offset", d.NextOffset, "bytes", d.Size)
		}
		if gen != p.drops.gen {
			return // Restore replaced the log meanwhile and reset the bookkeeping
		}
		if done {
			p.drops.dropped = cut
			close(p.drops.changed)
			p.drops.changed = make(chan struct{})
		}
	}
}

// dropOldest drops the oldest sealed segment if it ends at or before cut;
// done reports that none is left to drop below cut.
func (p *Processor) dropOldest(cut uint64) (*segment.SegmentInfo, bool, error) {
	var info *segment.SegmentInfo
	done := false
	err := p.WithLog(func(l *segment.Log) error {
		segs := l.Segments()
		if len(segs) < 2 || segs[0].NextOffset > cut {
			done = true
			return nil
		}
		d, err := l.DropSealed(segs[0].BaseOffset)
		if err != nil {
			return err
		}
		info = &d
		return nil
	})
	return info, done, err
}

// resetDrops points the drop bookkeeping at a log whose files below first
// are gone (Open, Restore). A job of the log before is not used.
func (p *Processor) resetDrops(first uint64) {
	p.drops.Lock()
	defer p.drops.Unlock()
	p.drops.gen++
	p.drops.job = nil
	p.drops.safe, p.drops.dropped = first, first
	if p.drops.changed == nil {
		p.drops.changed = make(chan struct{})
	}
}

// waitDropped waits until the files below cut are dropped.
func (p *Processor) waitDropped(ctx context.Context, cut uint64) error {
	for {
		p.drops.Lock()
		done, ch := p.drops.dropped >= cut, p.drops.changed
		p.drops.Unlock()
		if done {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("segments below %d not dropped: %w", cut, ctx.Err())
		}
	}
}
