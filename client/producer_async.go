package client

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/tsstore/tsstore/proto/tsstorev1"
)

// AsyncOptions configures an AsyncProducer. Zero fields take the defaults
// of DefaultAsyncOptions.
type AsyncOptions struct {
	// MaxBatchEvents (count) and MaxBatchBytes (bytes of payload, metadata,
	// stream and type) bound one append request. One Send larger than
	// either still goes as one request of its own.
	MaxBatchEvents int
	MaxBatchBytes  int
	// MaxInflight (count, 1-8) is how many append requests may await their
	// acknowledgement at once. At most 8, the server's per-producer dedup
	// window, so that any retry is answered with its original offsets.
	MaxInflight int
	// Linger (duration) is how long a request that is not full waits for
	// more events when a slot is free; 0 sends at once, so batches grow
	// only while every slot is busy (they adapt to the cluster's speed).
	Linger time.Duration
	// DeliveryTimeout (duration) bounds how long one request is retried
	// after failures whose outcome is unknown before the producer gives up.
	DeliveryTimeout time.Duration
	// RunGeneration is the training-run generation every append carries
	// (Client.StartRun); 0 for streams that are not runs. Appends of a
	// fenced generation fail with *FencedError.
	RunGeneration uint64
}

// DefaultAsyncOptions returns the defaults: batches of up to 8192 events
// or 2 MiB, 4 requests in flight, no linger, 2 minutes of retries.
func DefaultAsyncOptions() AsyncOptions {
	return AsyncOptions{MaxBatchEvents: 8192, MaxBatchBytes: 2 << 20, MaxInflight: 4, DeliveryTimeout: 2 * time.Minute}
}

func (o AsyncOptions) withDefaults() (AsyncOptions, error) {
	d := DefaultAsyncOptions()
	if o.MaxBatchEvents == 0 {
		o.MaxBatchEvents = d.MaxBatchEvents
	}
	if o.MaxBatchBytes == 0 {
		o.MaxBatchBytes = d.MaxBatchBytes
	}
	if o.MaxInflight == 0 {
		o.MaxInflight = d.MaxInflight
	}
	if o.DeliveryTimeout == 0 {
		o.DeliveryTimeout = d.DeliveryTimeout
	}
	switch {
	case o.MaxBatchEvents < 0 || o.MaxBatchBytes < 0:
		return o, errors.New("client: AsyncOptions batch bounds must not be negative")
	case o.MaxInflight < 0 || o.MaxInflight > maxAsyncInflight:
		return o, fmt.Errorf("client: AsyncOptions.MaxInflight %d must be in [1, %d]", o.MaxInflight, maxAsyncInflight)
	case o.Linger < 0 || o.DeliveryTimeout < 0:
		return o, errors.New("client: AsyncOptions durations must not be negative")
	}
	return o, nil
}

// maxAsyncInflight is the server's per-producer dedup window (the offsets
// of a producer's last 8 appends are remembered).
const maxAsyncInflight = 8

// AsyncProducer appends events without waiting for each acknowledgement,
// as a trainer does: Send queues events and returns at once, events of
// consecutive Sends are coalesced into append requests, and up to
// MaxInflight requests are in flight together.
//
// Order and exactly-once are kept by the producer sequence, as for
// Producer: every request carries the sequence of its first event, numbered
// in Send order, and the server applies a producer's requests only in
// sequence order. A request that overtakes its predecessor on the way is
// rejected with a sequence gap (nothing written) and re-sent once its
// predecessors are acknowledged; a request whose outcome is unknown is
// re-sent with the same sequence until it is acknowledged (the server
// answers a retry of a committed request with its original offsets). So
// the log holds the Sends exactly once, in Send order, and acknowledgements
// arrive in Send order.
//
// A definite rejection (e.g. an invalid or oversized event), a gap that
// persists with every predecessor acknowledged (another live producer with
// the same id), or a request still unresolved after DeliveryTimeout stops
// the producer: that Send and every later one fail with the error, and
// Err returns it. NextSeq then says where a new producer with the same id
// must resume (ResumeAsyncProducer).
//
// A request that holds several streams is stored as one record batch
// (the server keeps a request's events together), so a later replay of one
// of those streams reads the others' events too. A trainer with one stream
// per run is unaffected; one that interleaves Sends of many streams and
// replays them one by one should use one AsyncProducer per stream.
//
// The events' byte slices must not be modified until their Pending is
// done. AsyncProducer is safe for concurrent use.
type AsyncProducer struct {
	p    *Producer // id and the send path
	opts AsyncOptions

	in      chan *Pending
	flushCh chan struct{}
	results chan flightResult
	closing chan struct{} // closed by Close: finish what was sent, then exit
	quit    chan struct{} // closed when Close's ctx ends: fail what is left
	exited  chan struct{} // closed when the loop has returned
	ctx     context.Context
	cancel  context.CancelFunc // ends requests in flight after a failed Close

	// sendMu orders Sends into the queue; the loop never takes it.
	sendMu   sync.Mutex
	quitOnce sync.Once
	mu       struct {
		sync.Mutex
		last   *Pending // the latest Send, for Flush
		closed bool
		err    error  // sticky
		next   uint64 // sequence after the last acknowledged request
		stats  AsyncStats
	}
}

// AsyncStats counts what an AsyncProducer did.
type AsyncStats struct {
	Requests uint64 // append requests acknowledged
	Events   uint64 // events acknowledged
	// Resends counts requests sent again: after a sequence gap (a request
	// that overtook its predecessor) or an unknown outcome.
	Resends uint64
	// Gaps counts sequence-gap answers; Unknown counts failures after
	// which the request may or may not have committed.
	Gaps, Unknown uint64
}

// Pending is the outcome of one Send.
type Pending struct {
	events []*tsstorev1.Event
	bytes  int
	done   chan struct{}
	res    AppendResult
	err    error
}

// Done is closed when the Send is acknowledged or has failed.
func (f *Pending) Done() <-chan struct{} { return f.done }

// Result returns the Send's outcome once Done is closed: the offsets of
// its events (contiguous), the Raft index and the timestamp of the append
// that carried them. StreamVersions is not set. Duplicate with zero offsets
// means the events were committed but their offsets are no longer known.
func (f *Pending) Result() (AppendResult, error) {
	<-f.done
	return f.res, f.err
}

// Wait waits for the Send's outcome or for ctx.
func (f *Pending) Wait(ctx context.Context) (AppendResult, error) {
	select {
	case <-f.done:
		return f.res, f.err
	case <-ctx.Done():
		return AppendResult{}, ctx.Err()
	}
}

// NewAsyncProducer starts an async producer with the given id (empty: a
// random one) at sequence 1.
func (c *Client) NewAsyncProducer(id string, opts AsyncOptions) (*AsyncProducer, error) {
	return c.ResumeAsyncProducer(id, 1, opts)
}

// ResumeAsyncProducer starts an async producer continuing an earlier
// producer with the same id at sequence next.
func (c *Client) ResumeAsyncProducer(id string, next uint64, opts AsyncOptions) (*AsyncProducer, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &AsyncProducer{
		p:       c.ResumeProducer(id, next),
		opts:    o,
		in:      make(chan *Pending, 1024),
		flushCh: make(chan struct{}, 1),
		results: make(chan flightResult, maxAsyncInflight),
		closing: make(chan struct{}),
		quit:    make(chan struct{}),
		exited:  make(chan struct{}),
		ctx:     ctx,
		cancel:  cancel,
	}
	a.mu.next = max(next, 1)
	go a.loop()
	return a, nil
}

// ID returns the producer id.
func (a *AsyncProducer) ID() string { return a.p.id }

// NextSeq returns the sequence after the last acknowledged event: where a
// producer with the same id resumes after this one stopped.
func (a *AsyncProducer) NextSeq() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.mu.next
}

// Err returns the error that stopped the producer, or nil.
func (a *AsyncProducer) Err() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.mu.err
}

// Stats returns counters so far.
func (a *AsyncProducer) Stats() AsyncStats {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.mu.stats
}

// Send queues events to be appended atomically (all in one request) after
// every earlier Send. It blocks only while the producer's queue is full,
// until ctx is done. The error is immediate (invalid events, the producer
// stopped or closed); the append's own outcome is in the Pending.
func (a *AsyncProducer) Send(ctx context.Context, events ...Event) (*Pending, error) {
	if len(events) == 0 {
		return nil, fmt.Errorf("%w: no events", ErrInvalidEvent)
	}
	f := &Pending{events: make([]*tsstorev1.Event, len(events)), done: make(chan struct{})}
	for i, e := range events {
		if e.Stream == "" || e.Type == "" {
			return nil, fmt.Errorf("%w: event %d needs a stream and a type", ErrInvalidEvent, i)
		}
		f.events[i] = &tsstorev1.Event{Stream: e.Stream, Type: e.Type, Metadata: e.Metadata, Payload: e.Payload}
		f.bytes += len(e.Stream) + len(e.Type) + len(e.Metadata) + len(e.Payload) + 16
	}
	// Sends enter the queue in the order they take sendMu.
	a.sendMu.Lock()
	defer a.sendMu.Unlock()
	a.mu.Lock()
	err := a.stoppedLocked()
	a.mu.Unlock()
	if err != nil {
		return nil, err
	}
	select {
	case a.in <- f:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-a.exited:
		return nil, ErrClosed
	}
	a.mu.Lock()
	a.mu.last = f
	a.mu.Unlock()
	return f, nil
}

func (a *AsyncProducer) stoppedLocked() error {
	switch {
	case a.mu.err != nil:
		return a.mu.err
	case a.mu.closed:
		return ErrClosed
	}
	return nil
}

// Flush sends what is queued at once (ignoring Linger) and waits until
// every earlier Send is acknowledged. It returns the producer's error if
// it stopped.
func (a *AsyncProducer) Flush(ctx context.Context) error {
	a.mu.Lock()
	last := a.mu.last
	a.mu.Unlock()
	if last == nil {
		return a.Err()
	}
	select {
	case a.flushCh <- struct{}{}:
	default: // a flush is already pending
	}
	select {
	case <-last.done:
		if last.err != nil {
			return last.err
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close sends what is queued, waits (bounded by ctx) until every request
// is answered, and stops the producer. Sends not acknowledged when ctx
// ends fail with ErrClosed; their outcome is unknown if they were in
// flight. It returns the producer's error, if it stopped, or ctx's.
func (a *AsyncProducer) Close(ctx context.Context) error {
	a.sendMu.Lock() // no Send is between its check and the queue
	a.mu.Lock()
	first := !a.mu.closed
	a.mu.closed = true
	a.mu.Unlock()
	a.sendMu.Unlock()
	if first {
		close(a.closing)
	}
	var err error
	select {
	case <-a.exited:
	case <-ctx.Done():
		err = ctx.Err()
		a.quitOnce.Do(func() { close(a.quit) })
		a.cancel()
		<-a.exited
	}
	a.cancel()
	if e := a.Err(); e != nil {
		return e
	}
	return err
}
