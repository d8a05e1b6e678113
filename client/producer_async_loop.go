package client

import (
	"errors"
	"fmt"
	"time"

	"github.com/tsstore/tsstore/proto/tsstorev1"
)

// flight is one append request of an AsyncProducer, from its first send
// until it is acknowledged.
type flight struct {
	req   *tsstorev1.AppendRequest
	sends []*Pending
	bytes int
	first time.Time // first sent, for DeliveryTimeout
	tries int       // times sent (each may have been retried inside send)
	// asHead: the latest send went out while every earlier request was
	// acknowledged, so a sequence gap answer cannot be a reordering.
	asHead  bool
	waiting bool // answered with a sequence gap; re-send at the head
	acked   bool
	failed  bool                      // answered to the caller as failed
	resp    *tsstorev1.AppendResponse // nil if acked as an old duplicate
}

type flightResult struct {
	f        *flight
	resp     *tsstorev1.AppendResponse
	attempts int
	err      error
}

// asyncLoop is the state owned by the AsyncProducer's loop goroutine.
type asyncLoop struct {
	a        *AsyncProducer
	window   []*flight // sent, not yet resolved, in sequence order
	cur      *flight   // being filled
	held     *Pending  // did not fit in cur
	next     uint64    // sequence of the next new request
	flushing bool
	closing  bool // Close was called: exit once everything is answered
	lingerC  <-chan time.Time
	lingered bool
	dead     error
}

func (a *AsyncProducer) loop() {
	defer close(a.exited)
	l := &asyncLoop{a: a, next: a.NextSeq()}
	for {
		// Take whatever is queued before deciding what to send, so that
		// requests carry as many events as are waiting.
		for l.held == nil {
			select {
			case f := <-a.in:
				l.accept(f)
				continue
			default:
			}
			break
		}
		for l.ready() {
			l.dispatch()
		}
		if l.closing && len(l.window) == 0 && l.cur == nil && l.held == nil && len(a.in) == 0 {
			l.stop(ErrClosed)
			return
		}
		in := a.in
		if l.held != nil {
			in = nil
		}
		closingCh := a.closing
		if l.closing {
			closingCh = nil
		}
		select {
		case f := <-in:
			l.accept(f)
		case r := <-a.results:
			l.handle(r)
		case <-a.flushCh:
			l.flushing = true
		case <-closingCh:
			l.closing, l.flushing = true, true
		case <-l.lingerC:
			l.lingered = true
		case <-a.quit:
			l.stop(ErrClosed)
			return
		}
	}
}

func (l *asyncLoop) accept(f *Pending) {
	switch {
	case l.dead != nil:
		fail(f, l.dead)
	case l.cur == nil:
		l.start(f)
	case len(l.cur.req.Events)+len(f.events) <= l.a.opts.MaxBatchEvents && l.cur.bytes+f.bytes <= l.a.opts.MaxBatchBytes:
		l.cur.req.Events = append(l.cur.req.Events, f.events...)
		l.cur.sends = append(l.cur.sends, f)
		l.cur.bytes += f.bytes
	default:
		l.held = f
	}
}

func (l *asyncLoop) start(f *Pending) {
	l.cur = &flight{req: &tsstorev1.AppendRequest{ProducerId: l.a.p.id, Events: f.events, RunGeneration: l.a.opts.RunGeneration}, sends: []*Pending{f}, bytes: f.bytes}
	l.lingered = false
	l.lingerC = nil
	if l.a.opts.Linger > 0 {
		l.lingerC = time.After(l.a.opts.Linger)
	}
}

// ready reports whether cur should be sent now.
func (l *asyncLoop) ready() bool {
	o := l.a.opts
	if l.cur == nil || l.dead != nil || len(l.window) >= o.MaxInflight || l.anyWaiting() {
		return false
	}
	full := l.held != nil || len(l.cur.req.Events) >= o.MaxBatchEvents || l.cur.bytes >= o.MaxBatchBytes
	return o.Linger == 0 || l.flushing || l.closing || l.lingered || full
}

func (l *asyncLoop) dispatch() {
	f := l.cur
	f.req.ProducerSeq = l.next
	sealRequest(f.req)
	l.next += uint64(len(f.req.Events))
	f.first = time.Now()
	l.window = append(l.window, f)
	l.send(f)
	l.cur, l.lingerC = nil, nil
	if h := l.held; h != nil {
		l.held = nil
		l.start(h)
	}
	if l.cur == nil && len(l.a.in) == 0 {
		l.flushing = false
	}
}

func (l *asyncLoop) send(f *flight) {
	f.asHead = l.window[0] == f
	f.waiting = false
	f.tries++
	if f.tries > 1 {
		l.count(func(s *AsyncStats) { s.Resends++ })
	}
	a := l.a
	go func() {
		resp, attempts, err := a.p.send(a.ctx, f.req)
		a.results <- flightResult{f: f, resp: resp, attempts: attempts, err: err}
	}()
}

func (l *asyncLoop) handle(r flightResult) {
	f := r.f
	if f.failed {
		return // the caller was told already
	}
	switch err := r.err; {
	case err == nil:
		f.acked, f.resp = true, r.resp
	case errors.Is(err, ErrDuplicateSequence) && (f.tries > 1 || r.attempts > 1):
		f.acked = true // committed earlier; offsets no longer known
	case errors.Is(err, ErrSequenceGap) && !f.asHead:
		f.waiting = true // overtook a predecessor; nothing was written
		l.count(func(s *AsyncStats) { s.Gaps++ })
	case errors.Is(err, ErrClosed):
		l.fatal(f, err)
	case r.attempts > 0 && !MayHaveCommitted(err) && (f.tries == 1 && r.attempts == 1 || settlesEarlier(err)):
		l.fatal(f, fmt.Errorf("client: async producer %s: append at seq %d rejected: %w", l.a.p.id, f.req.GetProducerSeq(), err))
		// A retry refused in a way that says nothing of its earlier
		// attempts (DISK_FULL) falls through: one may have committed, so
		// it is sent again like an unknown outcome, up to DeliveryTimeout.
	case time.Since(f.first) > l.a.opts.DeliveryTimeout:
		l.fatal(f, fmt.Errorf("client: async producer %s: append at seq %d still in doubt after %v: %w",
			l.a.p.id, f.req.GetProducerSeq(), l.a.opts.DeliveryTimeout, err))
	default:
		l.count(func(s *AsyncStats) { s.Unknown++ })
		l.send(f) // outcome unknown: send again with the same sequence
	}
	for len(l.window) > 0 && l.window[0].acked {
		l.resolve(l.window[0])
		l.window = l.window[1:]
	}
	// Requests that overtook a predecessor go again, in order, once the
	// head of the window is one of them.
	if len(l.window) > 0 && l.window[0].waiting {
		for _, w := range l.window {
			if w.waiting {
				l.send(w)
			}
		}
	}
}

func (l *asyncLoop) count(fn func(*AsyncStats)) {
	l.a.mu.Lock()
	fn(&l.a.mu.stats)
	l.a.mu.Unlock()
}

// anyWaiting reports whether a request awaits re-sending; a new request
// sent now would only overtake it.
func (l *asyncLoop) anyWaiting() bool {
	for _, f := range l.window {
		if f.waiting {
			return true
		}
	}
	return false
}

// resolve answers an acknowledged request's Sends, in order.
func (l *asyncLoop) resolve(f *flight) {
	n := uint64(len(f.req.Events))
	a := l.a
	a.mu.Lock()
	a.mu.next = f.req.GetProducerSeq() + n
	a.mu.stats.Requests++
	a.mu.stats.Events += n
	a.mu.Unlock()
	var base AppendResult
	if f.resp != nil {
		base = result(f.resp)
		base.StreamVersions = nil
		a.p.c.noteAppended(f.resp.GetLastOffset())
	} else {
		base.Duplicate = true
	}
	off := base.FirstOffset
	for _, s := range f.sends {
		s.res = base
		if f.resp != nil {
			s.res.FirstOffset, s.res.LastOffset = off, off+uint64(len(s.events))-1
			off += uint64(len(s.events))
		}
		close(s.done)
	}
}

// fatal stops the producer at request k: k, every later request and
// every later Send fail with err. Earlier requests go on until they are
// acknowledged. If a later request was acknowledged already, k committed
// after all (its answer was lost): everything up to that one is resolved
// as committed instead.
func (l *asyncLoop) fatal(k *flight, err error) {
	l.a.mu.Lock()
	l.a.mu.err = err
	l.a.mu.Unlock()
	l.dead = err
	idx, last := len(l.window), -1
	for i, f := range l.window {
		if f == k {
			idx = i
		}
		if f.acked {
			last = i
		}
	}
	cut := idx
	if last > idx {
		for _, f := range l.window[:last+1] {
			l.resolve(f)
		}
		cut = last + 1
		l.window = l.window[cut:]
		cut = 0
	}
	for _, f := range l.window[cut:] {
		f.failed = true
		for _, s := range f.sends {
			fail(s, err)
		}
	}
	l.window = l.window[:cut]
	l.failQueued(err)
}

// stop fails everything left when the producer closes.
func (l *asyncLoop) stop(err error) {
	if l.dead == nil {
		l.dead = err
	}
	for _, f := range l.window {
		f.failed = true
		for _, s := range f.sends {
			fail(s, err)
		}
	}
	l.window = nil
	l.failQueued(err)
	for {
		select {
		case f := <-l.a.in:
			fail(f, l.dead)
		default:
			return
		}
	}
}

func (l *asyncLoop) failQueued(err error) {
	if l.cur != nil {
		for _, s := range l.cur.sends {
			fail(s, err)
		}
		l.cur = nil
	}
	if l.held != nil {
		fail(l.held, err)
		l.held = nil
	}
}

func fail(f *Pending, err error) {
	f.err = err
	close(f.done)
}
