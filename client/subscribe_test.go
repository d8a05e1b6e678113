package client

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/record"
)

// memNode starts a fake node that serves l faithfully: Read with o, and
// Subscribe with sub, or faithfully with o when sub is nil.
func memNode(t *testing.T, l *memLog, o memServe,
	sub func(call int, req *tsstorev1.ReadRequest, s tsstorev1.EventStore_SubscribeServer) error) *fakeNode {
	t.Helper()
	if sub == nil {
		sub = func(_ int, req *tsstorev1.ReadRequest, s tsstorev1.EventStore_SubscribeServer) error {
			return l.serve(s.Context(), req, true, o, s.Send)
		}
	}
	return startFake(t, &fakeNode{
		read: func(_ int, req *tsstorev1.ReadRequest, s tsstorev1.EventStore_ReadServer) error {
			return l.serve(s.Context(), req, false, o, s.Send)
		},
		subscribe: sub,
		list: func(_ int, req *tsstorev1.ListStreamsRequest) (*tsstorev1.ListStreamsResponse, error) {
			return l.listStreams(req, 2), nil
		},
	})
}

// startOn makes c's first read go to the node at addr.
func startOn(c *Client, addr string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.mu.cursor = slices.Index(c.seeds, addr)
}

// checkEvents compares delivered events with the expected stored ones.
func checkEvents(t *testing.T, got []RecordedEvent, want []memEvent) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d events, want %d", len(got), len(want))
	}
	for i, w := range want {
		g := got[i]
		if g.Offset != w.offset || g.Stream != w.stream || g.Type != w.typ || g.StreamVersion != w.version ||
			string(g.Payload) != fmt.Sprintf("%s/%d", w.stream, w.version) {
			t.Fatalf("event %d is {%d %s %s v%d %q}, want %+v", i, g.Offset, g.Stream, g.Type, g.StreamVersion, g.Payload, w)
		}
	}
}

func collect(t *testing.T, seq func(func(RecordedEvent, error) bool)) []RecordedEvent {
	t.Helper()
	var got []RecordedEvent
	for ev, err := range seq {
		if err != nil {
			t.Fatalf("after %d events: %v", len(got), err)
		}
		got = append(got, ev)
	}
	return got
}

func TestReplayFilteredFromServer(t *testing.T) {
	l := newMemLog(t)
	fillLog(l, 12)
	f := memNode(t, l, memServe{perMsg: 1, sendEmpty: true}, nil)
	c := newTestClient(t, f.addr)
	ctx := testCtx(t)
	mid := l.events(func(memEvent) bool { return true })[12].offset
	timeBase := l.bases()[5]
	startTime := time.Unix(0, memTime(timeBase))

	for _, tc := range []struct {
		name string
		from uint64
		opts []ReadOption
		keep func(memEvent) bool
	}{
		{"stream", 0, []ReadOption{Stream("run/1")},
			func(e memEvent) bool { return e.stream == "run/1" }},
		{"stream from version", 0, []ReadOption{Stream("run/1"), FromVersion(4)},
			func(e memEvent) bool { return e.stream == "run/1" && e.version >= 4 }},
		{"stream from offset", mid, []ReadOption{Stream("run/1")},
			func(e memEvent) bool { return e.stream == "run/1" && e.offset >= mid }},
		{"prefix and types", 0, []ReadOption{StreamPrefix("run/"), EventTypes("Step"), EventTypes("Started")},
			func(e memEvent) bool { return strings.HasPrefix(e.stream, "run/") && e.typ != "Done" }},
		{"types to", 0, []ReadOption{EventTypes("Y"), To(20)},
			func(e memEvent) bool { return e.typ == "Y" && e.offset < 20 }},
		{"from time", 0, []ReadOption{FromTime(startTime)},
			func(e memEvent) bool { return e.offset >= timeBase }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := collect(t, c.Replay(ctx, tc.from, tc.opts...))
			checkEvents(t, got, l.events(tc.keep))
		})
	}
	if _, empty := l.stats(); empty == 0 {
		t.Fatal("the server sent no zero-batch message; the test does not cover them")
	}
	reads := f.reads()
	if r := reads[1]; r.GetStream() != "run/1" || r.GetFromVersion() != 4 || r.GetFromOffset() != 0 {
		t.Fatalf("FromVersion request %v", r)
	}
	if r := reads[3]; !slices.Equal(r.GetEventTypes(), []string{"Step", "Started"}) || r.GetStreamPrefix() != "run/" {
		t.Fatalf("prefix/types request %v", r)
	}
	if r := reads[5]; r.GetFromTimestampUnixNano() != startTime.UnixNano() {
		t.Fatalf("FromTime request %v", r)
	}
}

func TestReplayStreamNotFound(t *testing.T) {
	l := newMemLog(t)
	fillLog(l, 3)
	f := memNode(t, l, memServe{}, nil)
	c := newTestClient(t, f.addr)
	var gotErr error
	for _, err := range c.Replay(testCtx(t), 0, Stream("nope")) {
		gotErr = err
	}
	if !errors.Is(gotErr, ErrStreamNotFound) || status.Code(gotErr) != codes.NotFound {
		t.Fatalf("err = %v, want ErrStreamNotFound", gotErr)
	}
	if n := len(f.reads()); n != 1 {
		t.Fatalf("%d reads, want 1 (not retried)", n)
	}
}

func TestReadOptionsRejected(t *testing.T) {
	f := startFake(t, &fakeNode{})
	c := newTestClient(t, f.addr)
	for _, err := range c.Replay(testCtx(t), 0, FromVersion(3)) {
		if err == nil || !strings.Contains(err.Error(), "needs Stream") {
			t.Fatalf("FromVersion without Stream: %v", err)
		}
	}
	for _, err := range c.Subscribe(testCtx(t), 0, To(10)) {
		if err == nil || !strings.Contains(err.Error(), "To does not apply") {
			t.Fatalf("Subscribe with To: %v", err)
		}
	}
	if len(f.reads())+len(f.subs()) != 0 {
		t.Fatal("invalid options reached the server")
	}
}

// resumeLog records OnResume and OnProgress calls and checks that each
// resume token is where the last message left the read.
type resumeLog struct {
	t        *testing.T
	progress []Progress
	resumes  []Resume
}

func (r *resumeLog) opts() []ReadOption {
	return []ReadOption{
		OnProgress(func(p Progress) { r.progress = append(r.progress, p) }),
		OnResume(func(res Resume) {
			if n := len(r.progress); n > 0 && res.Token != r.progress[n-1].NextOffset {
				r.t.Errorf("resume token %d, but the last message ended at %d", res.Token, r.progress[n-1].NextOffset)
			}
			r.resumes = append(r.resumes, res)
		}),
	}
}

func TestSubscribeSurvivesNodeKill(t *testing.T) {
	l := newMemLog(t)
	fillLog(l, 12)
	o := memServe{perMsg: 1, sendEmpty: true}
	a, b := memNode(t, l, o, nil), memNode(t, l, o, nil)
	c := newTestClient(t, a.addr, b.addr)
	startOn(c, a.addr)
	rl := &resumeLog{t: t}
	keep := func(e memEvent) bool { return strings.HasPrefix(e.stream, "run/") }

	var got []RecordedEvent
	for ev, err := range c.Subscribe(testCtx(t), 0, append(rl.opts(), StreamPrefix("run/"))...) {
		if err != nil {
			t.Fatalf("after %d events: %v", len(got), err)
		}
		got = append(got, ev)
		switch len(got) {
		case 3:
			a.stop() // kill the serving node mid-stream
		case 5:
			fillLog(l, 6) // live events
		}
		if len(got) > 5 && len(got) == len(l.events(keep)) {
			break
		}
	}
	checkEvents(t, got, l.events(keep))

	if len(rl.resumes) != 1 || rl.resumes[0].Node != a.addr || status.Code(rl.resumes[0].Err) != codes.Unavailable {
		t.Fatalf("resumes %+v, want one from %s after Unavailable", rl.resumes, a.addr)
	}
	subs := b.subs()
	if len(subs) != 1 {
		t.Fatalf("%d subscriptions on the surviving node, want 1", len(subs))
	}
	token := rl.resumes[0].Token
	if r := subs[0]; r.GetFromOffset() != token || r.GetMinNextOffset() != token || r.GetStreamPrefix() != "run/" || token == 0 {
		t.Fatalf("resumed with %v, want from_offset = min_next_offset = token %d and the same filter", r, token)
	}
	if s := c.Stats(); s.ReadResumes != 1 || s.SlowConsumerResumes != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestSubscribeResumesAfterSlowConsumer(t *testing.T) {
	l := newMemLog(t)
	fillLog(l, 12)
	slow := statusErr(t, codes.ResourceExhausted, tsstorev1.ErrorReason_ERROR_REASON_SLOW_CONSUMER,
		map[string]string{"lag": "1234"})
	f := startFake(t, &fakeNode{
		subscribe: func(call int, req *tsstorev1.ReadRequest, s tsstorev1.EventStore_SubscribeServer) error {
			o := memServe{perMsg: 1}
			switch call {
			case 1:
				o.limit, o.failErr = 3, slow
			case 2:
				o.limit = 1 // then end the stream cleanly, which a server must not do
			}
			return l.serve(s.Context(), req, true, o, s.Send)
		},
	})
	c := newTestClient(t, f.addr)
	rl := &resumeLog{t: t}
	const from = 4 // inside a batch: its first records are skipped

	var got []RecordedEvent
	for ev, err := range c.Subscribe(testCtx(t), from, rl.opts()...) {
		if err != nil {
			t.Fatalf("after %d events: %v", len(got), err)
		}
		got = append(got, ev)
		if len(got) == 10 {
			fillLog(l, 3)
		}
		if len(got) > 10 && got[len(got)-1].Offset == l.nextOffset()-1 {
			break
		}
	}
	checkEvents(t, got, l.events(func(e memEvent) bool { return e.offset >= from }))

	var sc *SlowConsumerError
	if len(rl.resumes) != 2 || !errors.As(rl.resumes[0].Err, &sc) || sc.Lag != 1234 ||
		!errors.Is(rl.resumes[1].Err, ErrProtocol) {
		t.Fatalf("resumes %+v, want SLOW_CONSUMER then a stream end", rl.resumes)
	}
	subs := f.subs()
	if len(subs) != 3 {
		t.Fatalf("%d subscribe calls, want 3", len(subs))
	}
	for i, res := range rl.resumes {
		r := subs[i+1]
		if r.GetFromOffset() != res.Token || r.GetMinNextOffset() != res.Token || res.Token <= from {
			t.Fatalf("resume %d: request %v, want from_offset = min_next_offset = token %d", i, r, res.Token)
		}
	}
	if s := c.Stats(); s.ReadResumes != 2 || s.SlowConsumerResumes != 1 {
		t.Fatalf("stats %+v, want 2 resumes, 1 for a slow consumer", s)
	}
}

func TestSubscribeStreamFromVersionResume(t *testing.T) {
	l := newMemLog(t)
	fillLog(l, 9)
	f := startFake(t, &fakeNode{
		subscribe: func(call int, req *tsstorev1.ReadRequest, s tsstorev1.EventStore_SubscribeServer) error {
			switch call {
			case 1:
				return status.Error(codes.Unavailable, "starting up")
			case 2:
				return l.serve(s.Context(), req, true, memServe{perMsg: 1, limit: 2, failErr: status.Error(codes.Unavailable, "crashed")}, s.Send)
			}
			return l.serve(s.Context(), req, true, memServe{perMsg: 1}, s.Send)
		},
	})
	c := newTestClient(t, f.addr)
	rl := &resumeLog{t: t}
	keep := func(e memEvent) bool { return e.stream == "run/1" && e.version >= 2 }
	var got []RecordedEvent
	for ev, err := range c.Subscribe(testCtx(t), 0, append(rl.opts(), Stream("run/1"), FromVersion(2))...) {
		if err != nil {
			t.Fatalf("after %d events: %v", len(got), err)
		}
		got = append(got, ev)
		if len(got) == len(l.events(keep)) {
			break
		}
	}
	checkEvents(t, got, l.events(keep))
	subs := f.subs()
	if len(subs) != 3 {
		t.Fatalf("%d subscribe calls, want 3", len(subs))
	}
	for i, r := range subs[:2] { // nothing received yet: the original selection again
		if r.GetStream() != "run/1" || r.GetFromVersion() != 2 || r.GetFromOffset() != 0 {
			t.Fatalf("call %d: %v, want stream run/1 from version 2", i+1, r)
		}
	}
	token := rl.resumes[1].Token
	if r := subs[2]; r.GetStream() != "run/1" || r.GetFromVersion() != 0 || r.GetFromOffset() != token ||
		r.GetMinNextOffset() != token || token == 0 {
		t.Fatalf("call 3: %v, want stream run/1 from offset %d, no version", r, token)
	}
}

func TestSubscribeWaitsForNewStream(t *testing.T) {
	l := newMemLog(t)
	fillLog(l, 4)
	f := memNode(t, l, memServe{}, nil)
	c := newTestClient(t, f.addr)
	added := false
	caughtUp := OnProgress(func(p Progress) {
		if p.CaughtUp() && !added {
			added = true
			l.add(memRec{"new", "Created"}, memRec{"other", "X"})
		}
	})
	for ev, err := range c.Subscribe(testCtx(t), 0, Stream("new"), caughtUp) {
		if err != nil {
			t.Fatal(err)
		}
		if ev.Stream != "new" || ev.StreamVersion != 1 || !added {
			t.Fatalf("event %+v", ev)
		}
		break
	}
}

// closingSub serves l and reports on done when the server stream ends.
func closingSub(l *memLog, done chan<- struct{}) func(int, *tsstorev1.ReadRequest, tsstorev1.EventStore_SubscribeServer) error {
	return func(_ int, req *tsstorev1.ReadRequest, s tsstorev1.EventStore_SubscribeServer) error {
		defer close(done)
		return l.serve(s.Context(), req, true, memServe{perMsg: 1}, s.Send)
	}
}

func TestSubscribeBreakClosesStream(t *testing.T) {
	l := newMemLog(t)
	fillLog(l, 6)
	done := make(chan struct{})
	f := memNode(t, l, memServe{}, closingSub(l, done))
	c := newTestClient(t, f.addr)
	n := 0
	for _, err := range c.Subscribe(testCtx(t), 0) {
		if err != nil {
			t.Fatal(err)
		}
		if n++; n == 2 {
			break
		}
	}
	select {
	case <-done:
	case <-testCtx(t).Done():
		t.Fatal("server stream still open after the loop broke")
	}
}

func TestSubscribeCancelClosesStream(t *testing.T) {
	l := newMemLog(t)
	fillLog(l, 6)
	done := make(chan struct{})
	f := memNode(t, l, memServe{}, closingSub(l, done))
	c := newTestClient(t, f.addr)
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	n := 0
	var last error
	for _, err := range c.Subscribe(ctx, 0) {
		if err != nil {
			last = err
			continue
		}
		if n++; n == 2 {
			cancel()
		}
	}
	if !errors.Is(last, context.Canceled) {
		t.Fatalf("last error %v, want context.Canceled", last)
	}
	select {
	case <-done:
	case <-testCtx(t).Done():
		t.Fatal("server stream still open after cancel")
	}
	if s := c.Stats(); s.ReadResumes != 0 {
		t.Fatalf("a cancelled subscription was resumed: %+v", s)
	}
}

func TestListStreamsPaging(t *testing.T) {
	l := newMemLog(t)
	fillLog(l, 3)
	l.add(memRec{"run/4", "A"}, memRec{"run/3", "A"}, memRec{"a", "A"})
	f := startFake(t, &fakeNode{
		list: func(call int, req *tsstorev1.ListStreamsRequest) (*tsstorev1.ListStreamsResponse, error) {
			if call == 1 {
				return nil, status.Error(codes.Unavailable, "restarting")
			}
			return l.listStreams(req, 2), nil
		},
	})
	c := newTestClient(t, f.addr)
	var names []string
	for si, err := range c.ListStreams(testCtx(t), "run/") {
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, si.Name)
		want := l.stream(si.Name)
		if si.Version != want.Version || si.FirstOffset != want.FirstOffset || si.LastOffset != want.LastOffset ||
			si.LastTimestamp.UnixNano() != want.LastTimestampUnixNano {
			t.Fatalf("%+v, want %v", si, want)
		}
	}
	if want := []string{"run/1", "run/2", "run/3", "run/4"}; !slices.Equal(names, want) {
		t.Fatalf("streams %v, want %v", names, want)
	}
	var afters []string
	for _, r := range f.lists() {
		if r.GetPrefix() != "run/" {
			t.Fatalf("request %v lost the prefix", r)
		}
		afters = append(afters, r.GetAfter())
	}
	if want := []string{"", "", "run/2"}; !slices.Equal(afters, want) {
		t.Fatalf("pages requested after %q, want %q", afters, want)
	}

	for range c.ListStreams(testCtx(t), "") {
		break
	}
	if n := len(f.lists()); n != 4 {
		t.Fatalf("breaking after one stream made %d more requests, want 1", n-3)
	}
}

func TestListStreamsMustAdvance(t *testing.T) {
	f := startFake(t, &fakeNode{
		list: func(int, *tsstorev1.ListStreamsRequest) (*tsstorev1.ListStreamsResponse, error) {
			return &tsstorev1.ListStreamsResponse{NextAfter: "x"}, nil
		},
	})
	c := newTestClient(t, f.addr)
	var last error
	for _, err := range c.ListStreams(testCtx(t), "") {
		last = err
	}
	if !errors.Is(last, ErrProtocol) || len(f.lists()) != 2 {
		t.Fatalf("err %v after %d pages, want ErrProtocol after 2", last, len(f.lists()))
	}
}

func TestReadBatchesFiltered(t *testing.T) {
	l := newMemLog(t)
	fillLog(l, 9)
	f := memNode(t, l, memServe{perMsg: 2}, nil)
	c := newTestClient(t, f.addr)
	var offs []uint64
	thinned := 0
	for b, err := range c.ReadBatches(testCtx(t), 0, Stream("run/1")) {
		if err != nil {
			t.Fatal(err)
		}
		if !b.Header().Complete() {
			thinned++
		}
		it := b.Records()
		var r record.Record
		for it.Next(&r) {
			offs = append(offs, r.Offset)
		}
	}
	var want []uint64
	for _, e := range l.events(func(e memEvent) bool { return e.stream == "run/1" }) {
		want = append(want, e.offset)
	}
	if !slices.Equal(offs, want) || thinned == 0 {
		t.Fatalf("records at %v (%d thinned batches), want %v", offs, thinned, want)
	}
}
