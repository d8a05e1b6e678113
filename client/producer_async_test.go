package client

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tsstore/tsstore/proto/tsstorev1"
)

// dedupLog applies appends the way the FSM does for one producer: only
// seq = last+1 is written; a retry of one of the last 8 appends gets the
// original answer; a later seq is a gap, an older one a duplicate. It can
// delay requests (so they overtake each other), lose answers after
// applying (so the client cannot tell), and reject a payload.
type dedupLog struct {
	t        *testing.T
	delay    time.Duration // random delay in [0, delay) before applying
	loseEach int           // lose the answer of every loseEach-th applied append
	reject   string        // payload answered with INVALID_EVENT

	mu struct {
		sync.Mutex
		log     []string // payloads in offset order
		last    uint64   // last committed sequence
		window  []*tsstorev1.AppendResponse
		seqs    []uint64 // first seq of each window entry
		applied int
	}
}

func (d *dedupLog) append(_ int, req *tsstorev1.AppendRequest) (*tsstorev1.AppendResponse, error) {
	if d.delay > 0 {
		time.Sleep(rand.N(d.delay))
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	seq, n := req.GetProducerSeq(), uint64(len(req.GetEvents()))
	for i, s := range d.mu.seqs {
		if s == seq {
			r := proto.CloneOf(d.mu.window[i])
			r.Duplicate = true
			return r, nil
		}
	}
	switch {
	case seq <= d.mu.last:
		return nil, statusErr(d.t, codes.FailedPrecondition, tsstorev1.ErrorReason_ERROR_REASON_DUPLICATE_SEQUENCE,
			map[string]string{"last_seq": strconv.FormatUint(d.mu.last, 10)})
	case seq != d.mu.last+1:
		return nil, statusErr(d.t, codes.FailedPrecondition, tsstorev1.ErrorReason_ERROR_REASON_SEQUENCE_GAP,
			map[string]string{"expected_seq": strconv.FormatUint(d.mu.last+1, 10), "got_seq": strconv.FormatUint(seq, 10)})
	}
	for _, e := range req.GetEvents() {
		if string(e.GetPayload()) == d.reject {
			return nil, statusErr(d.t, codes.InvalidArgument, tsstorev1.ErrorReason_ERROR_REASON_INVALID_EVENT, nil)
		}
	}
	first := uint64(len(d.mu.log))
	for _, e := range req.GetEvents() {
		d.mu.log = append(d.mu.log, string(e.GetPayload()))
	}
	d.mu.last = seq + n - 1
	resp := &tsstorev1.AppendResponse{FirstOffset: first, LastOffset: first + n - 1, RaftIndex: uint64(d.mu.applied + 1)}
	d.mu.window = append(d.mu.window, resp)
	d.mu.seqs = append(d.mu.seqs, seq)
	if len(d.mu.window) > 8 {
		d.mu.window, d.mu.seqs = d.mu.window[1:], d.mu.seqs[1:]
	}
	d.mu.applied++
	if d.loseEach > 0 && d.mu.applied%d.loseEach == 0 {
		return nil, status.Error(codes.Unavailable, "answer lost")
	}
	return resp, nil
}

func (d *dedupLog) payloads() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.mu.log...)
}

func newDedupNode(t *testing.T, d *dedupLog) *fakeNode {
	d.t = t
	return startFake(t, &fakeNode{append: d.append, status: func() (*tsstorev1.StatusResponse, error) {
		return &tsstorev1.StatusResponse{Role: "leader"}, nil
	}})
}

// sendAll sends `sends` Sends of 1-5 events from several goroutines,
// serialized by a lock so that the Send order is known, and returns the
// payloads in Send order with each Send's pending.
func sendAll(t *testing.T, a *AsyncProducer, sends int) ([][]string, []*Pending) {
	t.Helper()
	ctx := testCtx(t)
	var mu sync.Mutex
	var order [][]string
	var pend []*Pending
	var wg sync.WaitGroup
	next := 0
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				if next == sends {
					mu.Unlock()
					return
				}
				i := next
				next++
				var evs []Event
				var ps []string
				for j := range 1 + i%5 {
					p := fmt.Sprintf("%d.%d", i, j)
					evs = append(evs, ev(p))
					ps = append(ps, p)
				}
				f, err := a.Send(ctx, evs...)
				if err != nil {
					mu.Unlock()
					t.Errorf("Send %d: %v", i, err)
					return
				}
				order = append(order, ps)
				pend = append(pend, f)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return order, pend
}

func TestAsyncProducerExactlyOnceInOrder(t *testing.T) {
	d := &dedupLog{delay: 2 * time.Millisecond, loseEach: 7}
	n := newDedupNode(t, d)
	c := newTestClient(t, n.addr)
	a, err := c.NewAsyncProducer("trainer-1", AsyncOptions{MaxBatchEvents: 16, MaxInflight: 8})
	if err != nil {
		t.Fatal(err)
	}
	order, pend := sendAll(t, a, 400)
	if err := a.Close(testCtx(t)); err != nil {
		t.Fatalf("Close: %v", err)
	}
	var want []string
	for _, ps := range order {
		want = append(want, ps...)
	}
	got := d.payloads()
	if len(got) != len(want) {
		t.Fatalf("log holds %d events, sent %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("log[%d] = %q, want %q (Send order)", i, got[i], want[i])
		}
	}
	for i, f := range pend {
		res, err := f.Result()
		if err != nil {
			t.Fatalf("Send %d: %v", i, err)
		}
		for j, p := range order[i] {
			if off := res.FirstOffset + uint64(j); got[off] != p {
				t.Fatalf("Send %d event %d: offset %d holds %q, want %q", i, j, off, got[off], p)
			}
		}
		if res.LastOffset != res.FirstOffset+uint64(len(order[i]))-1 {
			t.Fatalf("Send %d: offsets %d..%d for %d events", i, res.FirstOffset, res.LastOffset, len(order[i]))
		}
	}
	st := a.Stats()
	if st.Events != uint64(len(want)) || st.Requests >= 400 {
		t.Fatalf("stats %+v: want %d events in fewer requests than Sends", st, len(want))
	}
	if st.Resends == 0 {
		t.Fatalf("stats %+v: lost answers must have been re-sent", st)
	}
	if a.NextSeq() != uint64(len(want))+1 {
		t.Fatalf("NextSeq %d, want %d", a.NextSeq(), len(want)+1)
	}
}

func TestAsyncProducerStopsOnRejection(t *testing.T) {
	d := &dedupLog{reject: "bad"}
	n := newDedupNode(t, d)
	c := newTestClient(t, n.addr)
	a, err := c.NewAsyncProducer("", AsyncOptions{MaxBatchEvents: 1, MaxInflight: 4})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	var pend []*Pending
	for _, p := range []string{"a", "b", "bad", "c", "d"} {
		f, err := a.Send(ctx, ev(p))
		if err != nil {
			t.Fatalf("Send %s: %v", p, err)
		}
		pend = append(pend, f)
	}
	if err := a.Flush(ctx); !errors.Is(err, ErrInvalidEvent) {
		t.Fatalf("Flush: %v, want ErrInvalidEvent", err)
	}
	for i, f := range pend {
		_, err := f.Result()
		if (i < 2) != (err == nil) {
			t.Fatalf("Send %d: err %v", i, err)
		}
	}
	if got := d.payloads(); len(got) != 2 || got[0] != "a" || got[1] != "b" {
		t.Fatalf("log %q, want [a b]", got)
	}
	if !errors.Is(a.Err(), ErrInvalidEvent) || a.NextSeq() != 3 {
		t.Fatalf("Err %v NextSeq %d, want ErrInvalidEvent and 3", a.Err(), a.NextSeq())
	}
	if _, err := a.Send(ctx, ev("e")); !errors.Is(err, ErrInvalidEvent) {
		t.Fatalf("Send after stop: %v", err)
	}
	a.Close(ctx)
	// A resumed producer continues where the acknowledged ones ended.
	b, err := c.ResumeAsyncProducer(a.ID(), a.NextSeq(), AsyncOptions{})
	if err != nil {
		t.Fatal(err)
	}
	f, err := b.Send(ctx, ev("c"))
	if err != nil {
		t.Fatal(err)
	}
	if res, err := f.Wait(ctx); err != nil || res.FirstOffset != 2 {
		t.Fatalf("resumed Send: %+v %v, want offset 2", res, err)
	}
	if err := b.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Send(ctx, ev("x")); !errors.Is(err, ErrClosed) {
		t.Fatalf("Send after Close: %v, want ErrClosed", err)
	}
}

func TestAsyncProducerLingerBatches(t *testing.T) {
	d := &dedupLog{}
	n := newDedupNode(t, d)
	c := newTestClient(t, n.addr)
	a, err := c.NewAsyncProducer("", AsyncOptions{Linger: time.Hour, MaxBatchEvents: 1000})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	for i := range 10 {
		if _, err := a.Send(ctx, ev(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	// Nothing is sent before the linger ends, unless flushed.
	if err := a.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := len(n.appends()); got != 1 {
		t.Fatalf("%d requests, want the 10 Sends in one", got)
	}
	if err := a.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestAsyncOptionsValidate(t *testing.T) {
	c := newTestClient(t, deadAddr(t))
	if _, err := c.NewAsyncProducer("", AsyncOptions{MaxInflight: 9}); err == nil {
		t.Fatal("MaxInflight 9 accepted; the dedup window is 8")
	}
	a, err := c.NewAsyncProducer("", AsyncOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Close(testCtx(t)); err != nil {
		t.Fatalf("Close of an idle producer: %v", err)
	}
	if _, err := a.Send(testCtx(t), Event{Stream: "s"}); !errors.Is(err, ErrInvalidEvent) {
		t.Fatalf("event without type: %v", err)
	}
}
