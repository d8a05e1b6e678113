package server

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/tsstore/tsstore/fsm"
)

// proposer implements group commit: requests that arrive while earlier
// Raft entries are in flight are coalesced into one entry, so throughput
// grows with concurrency instead of being one fsync per request.
//
// run takes requests from in and proposes entries; respond waits for each
// entry's future, in order, and answers its requests. The inflight channel
// between them bounds the entries in flight; while it is full, requests
// pile up in `in` and the next entry carries all of them.
//
// The window is bounded in entries (MaxInflightEntries) and in encoded
// bytes (MaxInflightBytes, inflightBytes): raft keeps every entry in
// flight in memory until it is applied, its log writer grows a buffer to
// the largest batch it stored, and followers receive them in append RPCs,
// so entries of large requests must not fill a window sized for counts.
type proposer struct {
	n        *Node
	in       chan *proposal
	inflight chan inflightEntry
	bytes    *inflightBytes
	gate     *seqGate // a producer's pipelined requests enter in order
}

// inflightBytes counts the encoded bytes of the entries in flight. One
// goroutine acquires (run), another releases (respond).
type inflightBytes struct {
	max   int64
	held  atomic.Int64
	freed chan struct{} // signalled, without blocking, on every release
}

// acquire waits until n bytes fit beside those in flight, or nothing is
// in flight (an entry larger than max goes alone), and counts them. It
// returns false if done closes first.
func (b *inflightBytes) acquire(n int64, done <-chan struct{}) bool {
	for {
		if h := b.held.Load(); h == 0 || h+n <= b.max {
			b.held.Add(n)
			return true
		}
		select {
		case <-b.freed:
		case <-done:
			return false
		}
	}
}

func (b *inflightBytes) release(n int64) {
	b.held.Add(-n)
	select {
	case b.freed <- struct{}{}:
	default:
	}
}

type proposal struct {
	op   fsm.AppendOp
	size int
	done chan proposalResult // buffered: respond never blocks on it
}

type proposalResult struct {
	res fsm.AppendResult
	err error // entry-level failure: not leader, shutdown, storage
}

type inflightEntry struct {
	f     raft.ApplyFuture
	props []*proposal
	bytes int64 // the encoded entry's, counted in proposer.bytes
}

func newProposer(n *Node) *proposer {
	return &proposer{
		n:        n,
		in:       make(chan *proposal, 4*n.cfg.MaxEntryRequests),
		inflight: make(chan inflightEntry, n.cfg.MaxInflightEntries),
		bytes:    &inflightBytes{max: n.cfg.MaxInflightBytes, freed: make(chan struct{}, 1)},
		gate:     newSeqGate(),
	}
}

// propose submits one request and waits for its result.
func (p *proposer) propose(ctx context.Context, op fsm.AppendOp, size int) (fsm.AppendResult, error) {
	pr := &proposal{op: op, size: size, done: make(chan proposalResult, 1)}
	forced := p.gate.enter(ctx, op.ProducerID, op.Seq)
	select {
	case p.in <- pr:
		p.gate.pass(op.ProducerID, op.Seq, uint64(len(op.Events)), forced)
	case <-ctx.Done():
		return fsm.AppendResult{}, ctx.Err()
	case <-p.n.shutdown:
		return fsm.AppendResult{}, raft.ErrRaftShutdown
	}
	select {
	case r := <-pr.done:
		return r.res, r.err
	case <-ctx.Done():
		// The entry may still commit; a retry with the same producer
		// sequence returns its offsets.
		return fsm.AppendResult{}, ctx.Err()
	}
}

func (p *proposer) run() {
	cfg := p.n.cfg
	for {
		var first *proposal
		select {
		case first = <-p.in:
		case <-p.n.shutdown:
			p.drain()
			return
		}
		props := []*proposal{first}
		size := first.size
	gather:
		for len(props) < cfg.MaxEntryRequests && size < cfg.MaxEntryBytes {
			select {
			case q := <-p.in:
				props = append(props, q)
				size += q.size
			default:
				break gather
			}
		}
		orderBySeq(props)
		cmd := fsm.AppendCommand{Timestamp: time.Now().UnixNano(), Ops: make([]fsm.AppendOp, len(props)), ProducerTTL: int64(cfg.ProducerTTL),
			Compression: cfg.compressionCodec()}
		for i, q := range props {
			cmd.Ops[i] = q.op
		}
		data, err := fsm.Encode(fsm.CmdAppend, &cmd)
		if err != nil {
			finish(props, proposalResult{err: err})
			continue
		}
		if !p.bytes.acquire(int64(len(data)), p.n.shutdown) {
			finish(props, proposalResult{err: raft.ErrRaftShutdown})
			p.drain()
			return
		}
		p.n.metrics.entryProposed(props, len(data))
		f := p.n.raft.Apply(data, 5*time.Second)
		select {
		case p.inflight <- inflightEntry{f: f, props: props, bytes: int64(len(data))}:
		case <-p.n.shutdown:
			p.n.metrics.entryDone()
			p.bytes.release(int64(len(data)))
			finish(props, proposalResult{err: raft.ErrRaftShutdown})
			p.drain()
			return
		}
	}
}

// orderBySeq puts the requests of each producer in one entry in producer
// sequence order, in the positions they already hold. A pipelining
// producer (client.AsyncProducer) sends its requests in sequence order,
// but the server handles each on its own goroutine and they may reach the
// proposer out of order; the FSM would reject the overtaking one as a
// sequence gap and the producer would have to send it again. Requests of
// different producers are concurrent, so their relative order is free.
func orderBySeq(props []*proposal) {
	if len(props) < 2 {
		return
	}
	last := make(map[string]uint64, len(props))
	sorted := true
	for _, q := range props {
		id := q.op.ProducerID
		if id == "" {
			continue
		}
		if s, ok := last[id]; ok && q.op.Seq < s {
			sorted = false
		}
		last[id] = q.op.Seq
	}
	if sorted {
		return
	}
	pos := make(map[string][]int)
	for i, q := range props {
		if id := q.op.ProducerID; id != "" {
			pos[id] = append(pos[id], i)
		}
	}
	for _, idx := range pos {
		if len(idx) < 2 {
			continue
		}
		group := make([]*proposal, len(idx))
		for j, i := range idx {
			group[j] = props[i]
		}
		slices.SortStableFunc(group, func(a, b *proposal) int {
			switch {
			case a.op.Seq < b.op.Seq:
				return -1
			case a.op.Seq > b.op.Seq:
				return 1
			}
			return 0
		})
		for j, i := range idx {
			props[i] = group[j]
		}
	}
}

// drain fails requests still queued at shutdown.
func (p *proposer) drain() {
	for {
		select {
		case q := <-p.in:
			q.done <- proposalResult{err: raft.ErrRaftShutdown}
		default:
			return
		}
	}
}

func (p *proposer) respond() {
	for {
		var e inflightEntry
		select {
		case e = <-p.inflight:
		case <-p.n.shutdown:
			for {
				select {
				case e := <-p.inflight:
					p.bytes.release(e.bytes)
					finish(e.props, proposalResult{err: raft.ErrRaftShutdown})
				default:
					return
				}
			}
		}
		p.answer(e)
	}
}

func (p *proposer) answer(e inflightEntry) {
	defer p.n.metrics.entryDone()
	defer p.bytes.release(e.bytes)
	if err := p.n.await(nil, e.f); err != nil {
		finish(e.props, proposalResult{err: err})
		return
	}
	res, ok := e.f.Response().(*fsm.ApplyResult)
	switch {
	case !ok:
		finish(e.props, proposalResult{err: errors.New("server: unexpected apply response")})
	case res.Err != nil:
		finish(e.props, proposalResult{err: res.Err})
	case res.Skipped || len(res.Appends) != len(e.props):
		finish(e.props, proposalResult{err: errors.New("server: entry applied without results")})
	default:
		for i, q := range e.props {
			q.done <- proposalResult{res: res.Appends[i]}
		}
	}
}

func finish(props []*proposal, r proposalResult) {
	for _, q := range props {
		q.done <- r
	}
}
