package server

import (
	"context"
	"errors"
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
type proposer struct {
	n        *Node
	in       chan *proposal
	inflight chan inflightEntry
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
}

func newProposer(n *Node) *proposer {
	return &proposer{
		n:        n,
		in:       make(chan *proposal, 4*n.cfg.MaxEntryRequests),
		inflight: make(chan inflightEntry, n.cfg.MaxInflightEntries),
	}
}

// propose submits one request and waits for its result.
func (p *proposer) propose(ctx context.Context, op fsm.AppendOp, size int) (fsm.AppendResult, error) {
	pr := &proposal{op: op, size: size, done: make(chan proposalResult, 1)}
	select {
	case p.in <- pr:
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
		cmd := fsm.AppendCommand{Timestamp: time.Now().UnixNano(), Ops: make([]fsm.AppendOp, len(props))}
		for i, q := range props {
			cmd.Ops[i] = q.op
		}
		data, err := fsm.Encode(fsm.CmdAppend, &cmd)
		if err != nil {
			finish(props, proposalResult{err: err})
			continue
		}
		p.n.metrics.entryProposed(props, len(data))
		f := p.n.raft.Apply(data, 5*time.Second)
		select {
		case p.inflight <- inflightEntry{f: f, props: props}:
		case <-p.n.shutdown:
			p.n.metrics.entryDone()
			finish(props, proposalResult{err: raft.ErrRaftShutdown})
			p.drain()
			return
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
