package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/grpc"

	"github.com/tsstore/tsstore/bench"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/record"
)

// Workload x: hostile clients on the leader, on real processes (issue #11,
// point 4). With TLS and tokens on (x turns on --secure):
//
//  1. baseline: c's batching producer for --duration, every node's RSS
//     and Go heap sampled every 250 ms;
//  2. hostile: against the leader, --hostile-readers Read streams from
//     offset 0 (with the read token) spread over --hostile-reader-conns
//     connections that grant the node huge windows and never read their
//     socket, plus --hostile-appends Append calls without a token, over
//     --hostile-append-conns connections, that each announce a 16 MiB
//     message, send --hostile-append-bytes of it and stall. Kept open (a
//     reader connection the node resets is dialled again), the same
//     producer runs for --duration while the memory of every node is
//     sampled;
//  3. after: they are closed, memory is read 5 s after the node ended the
//     readers' calls, and the producer runs once more.
//
// Halfway through each timed run a well-behaved reader times its wait for
// the first 10,000 events from the leader. What the node did with the
// hostile calls comes from its own metrics (grpc's and
// tsstore_auth_refused_total): how many readers reached the Read handler,
// how many ended and with which code, how many appends were refused on
// their headers.

// hostileAnnounced is the message size each half-sent append announces:
// the default max-request-bytes.
const hostileAnnounced = 16 << 20

// hostileSampleEvery is the memory sampling interval.
const hostileSampleEvery = 250 * time.Millisecond

// Goals of issue #11 point 4.
const (
	hostileRSSGoalMiB = 512
	hostileRateGoal   = 0.8 // hostile rate / baseline rate
)

// hostileFlags shape x.
type hostileFlags struct {
	readers, readerConns int
	appends, appendConns int
	appendBytes          int
	redial               bool
	bigAppenders         int   // authenticated (bench_hostile_big.go)
	bigRate              int64 // their token's append quota, bytes a second (0: none)
	streamAppenders      int   // authenticated, AppendStream (bench_hostile_stream.go)
	streamCalls          int   // AppendStreams per stream appender
}

func (h *hostileFlags) register(fs *pflag.FlagSet) {
	fs.IntVar(&h.readers, "hostile-readers", 1000, "x: Read streams opened on the leader (with a read token) that never read")
	fs.IntVar(&h.readerConns, "hostile-reader-conns", 10, "x: connections the stalled readers are spread over")
	fs.IntVar(&h.appends, "hostile-appends", 100, "x: Append calls without a token that each send --hostile-append-bytes of a 16 MiB message and stall")
	fs.IntVar(&h.appendConns, "hostile-append-conns", 10, "x: connections the half-sent appends are spread over")
	fs.IntVar(&h.appendBytes, "hostile-append-bytes", 15<<20, "x: bytes of its 16 MiB message each half-sent append sends")
	fs.IntVar(&h.bigAppenders, "hostile-big-appenders", 0, "x: authenticated clients (their own append token, bench-bulk) that send ~15 MiB unary appends to the leader during the attack, one at a time each, on their own connections")
	fs.Int64Var(&h.bigRate, "hostile-big-appenders-rate", 0, "x: the big appenders' token's append-rate quota on each node, bytes a second (0: no quota); they use their own token, bench-bulk")
	fs.IntVar(&h.streamAppenders, "hostile-stream-appenders", 0, "x: authenticated connections (the bulk token) that open --hostile-stream-appender-streams AppendStreams on the leader during the attack, send 90% of a ~15 MB request on each, keeping to the node's flow-control windows, and stall")
	fs.IntVar(&h.streamCalls, "hostile-stream-appender-streams", 10, "x: AppendStreams per stream appender connection")
	fs.BoolVar(&h.redial, "hostile-redial", true, "x: dial a stalled reader connection again, with its streams, when the node resets it (gRPC's TCP_USER_TIMEOUT does after 20 s of a closed window)")
}

func (h hostileFlags) validate() error {
	if h.readers < 0 || h.appends < 0 || h.bigAppenders < 0 || h.streamAppenders < 0 || h.streamCalls < 1 || h.bigRate < 0 || h.readerConns < 1 || h.appendConns < 1 || h.appendBytes < 0 || h.appendBytes >= hostileAnnounced {
		return fmt.Errorf("%w: --hostile-readers and --hostile-appends must be >= 0, the --hostile-*-conns >= 1, --hostile-append-bytes in [0, 16 MiB)", errUsage)
	}
	return nil
}

func (h hostileFlags) config() map[string]any {
	return map[string]any{"readers": h.readers, "reader_conns": h.readerConns, "appends": h.appends,
		"append_conns": h.appendConns, "append_bytes_sent": h.appendBytes, "append_bytes_announced": hostileAnnounced, "redial": h.redial,
		"big_appenders": h.bigAppenders, "big_appenders_rate": h.bigRate,
		"stream_appenders": h.streamAppenders, "stream_appender_streams": h.streamCalls}
}

// hostileClients runs x.
func (b *benchRun) hostileClients(ctx context.Context) ([]bench.Result, error) {
	o := &hostileOutcome{}
	var err error
	if o.baseLeader, err = b.lc.leader(ctx); err != nil {
		return nil, err
	}
	probe := b.probeMidway(ctx, b.lc.c.Nodes[o.baseLeader].APIAddr)
	o.base, err = b.timedLoad(ctx, "x-baseline", b.sampleMemory(ctx))
	o.baseProbe = probe()
	if err != nil {
		return nil, err
	}

	// The attack goes to the leader of the moment.
	li, err := b.lc.leader(ctx)
	if err != nil {
		return nil, err
	}
	o.li = li
	leader := b.lc.c.Nodes[li]
	if o.before, err = scrapeSeries(ctx, b.lc.metrics[li]); err != nil {
		return nil, err
	}
	mem := b.sampleMemoryWatching(ctx, li, o.before) // from the start of the attack
	start := time.Now()
	o.hc = b.openHostile(ctx, leader.APIAddr)
	defer o.hc.close()
	if n := b.f.hostile.bigAppenders; n > 0 {
		o.big = b.startBigAppenders(ctx, leader.APIAddr, n)
		defer o.big.close()
	}
	if n := b.f.hostile.streamAppenders; n > 0 {
		o.streams = b.startStreamAppenders(ctx, leader.APIAddr, n, b.f.hostile.streamCalls)
		defer o.streams.close()
	}
	o.hc.mu.Lock()
	opened := o.hc.readers
	o.hc.mu.Unlock()
	reached := b.waitReaders(ctx, li, o.before, opened)
	o.setup = time.Since(start)
	o.hc.mu.Lock()
	fmt.Fprintf(b.log, "bench: x: %d of %d stalled readers reached the leader %s's Read handler, %d half-sent appends written, in %.1f s\n",
		reached, o.hc.readers, leader.ID, o.hc.appendsSent, o.setup.Seconds())
	o.hc.mu.Unlock()
	probe = b.probeMidway(ctx, leader.APIAddr)
	st, note, err := b.batchingLoad(ctx, "x-hostile", "c's producer beside the hostile clients")
	o.probe = probe()
	if err != nil {
		mem.stop()
		return nil, err
	}
	o.atEnd, err = scrapeSeries(ctx, b.lc.metrics[li])
	if err != nil {
		mem.stop()
		return nil, err
	}
	b.heapProfile(ctx, li, "x-hostile")
	o.peak, _ = mem.stop()
	o.readerTimeline = mem.readerTimeline()
	o.attack = &timedLoad{st: st, note: note, peak: o.peak}

	o.big.close()
	o.streamSummary = o.streams.summary() // closes them
	o.hc.close()
	o.after, o.drained = b.memoryAfter(ctx, li, o.before)
	if o.again, err = b.timedLoad(ctx, "x-after", b.sampleMemory(ctx)); err != nil {
		return nil, err
	}
	b.heapProfile(ctx, li, "x-after")
	if n := sumSeries(o.atEnd, "tsstore_raft_leader_changes_total") - sumSeries(o.before, "tsstore_raft_leader_changes_total"); n > 0 {
		o.moved = fmt.Sprintf("; LEADERSHIP CHANGED %.0f times as %s saw it during the attack", n, leader.ID)
	}
	if li2, err := b.lc.leader(ctx); err == nil && li2 != li {
		o.moved += fmt.Sprintf("; LEADERSHIP MOVED from %s to %s by the end of x", leader.ID, b.lc.c.Nodes[li2].ID)
	}
	res := b.hostileResults(o)
	fmt.Fprintf(b.log, "bench: x: %s\n", o.verdict)
	return res, nil
}

// timedLoad is one run of c's producer and the memory peaks meanwhile.
type timedLoad struct {
	st   *bench.Stats
	note string
	peak []nodeMem
}

// timedLoad runs c's producer for --duration while mem samples, and stops
// mem.
func (b *benchRun) timedLoad(ctx context.Context, id string, mem *memSampler) (*timedLoad, error) {
	st, note, err := b.batchingLoad(ctx, id, "c's producer")
	peak, _ := mem.stop()
	if err != nil {
		return nil, err
	}
	return &timedLoad{st: st, note: note, peak: peak}, nil
}

// hostileOutcome is everything x measured.
type hostileOutcome struct {
	li                  int // the leader the hostile clients target
	baseLeader          int // the leader when the baseline started
	base, attack, again *timedLoad
	peak, after         []nodeMem // from the start of the attack; 5 s after closing it
	before, atEnd       map[string]float64
	hc                  *hostileConns
	big                 *bigAppenders    // nil without --hostile-big-appenders
	streams             *streamAppenders // nil without --hostile-stream-appenders
	streamSummary       string
	setup, drained      time.Duration
	baseProbe, probe    string
	readerTimeline      string
	moved, verdict      string
}

// hostileResults makes x's rows: the baseline, the attack, and the same
// load again after it.
func (b *benchRun) hostileResults(o *hostileOutcome) []bench.Result {
	row := func(id, name string, t *timedLoad, node int, mark string) bench.Result {
		r := b.appendResult(id, name, t.st, t.note)
		r.HeapInuseMB, r.RSSMB = maxMem(t.peak)
		r.Note += fmt.Sprintf("; peak memory, sampled every %v (RSS / heap in use, MiB): %s", hostileSampleEvery, b.memList(t.peak, node, mark))
		return r
	}
	r0 := row("x-baseline", "c's producer, TLS + tokens, no hostile clients", o.base, o.baseLeader, "leader")
	if o.baseLeader != o.li {
		r0.Note += fmt.Sprintf("; LEADERSHIP MOVED during the baseline, from %s", b.lc.c.Nodes[o.baseLeader].ID)
	}
	r0.Note += "; a reader's wait for the first 10,000 events from the leader halfway through: " + o.baseProbe
	h := b.f.hostile
	name := fmt.Sprintf("c's producer beside %d stalled readers + %d half-sent unauthenticated appends on the leader", h.readers, h.appends)
	if h.bigAppenders > 0 {
		name += fmt.Sprintf(" + %d authenticated big appenders", h.bigAppenders)
		if h.bigRate > 0 {
			name += fmt.Sprintf(" (quota %d B/s)", h.bigRate)
		}
	}
	if h.streamAppenders > 0 {
		name += fmt.Sprintf(" + %d x %d stalled authenticated AppendStreams", h.streamAppenders, h.streamCalls)
	}
	r1 := row("x-hostile", name, o.attack, o.li, "leader, attacked")
	rate, baseRate := o.attack.st.EventsPerSec(), o.base.st.EventsPerSec()
	ratio := rate / max(baseRate, 1)
	o.verdict = hostileVerdict(o.peak[o.li].rss, ratio)
	r1.Note += fmt.Sprintf(" (from the start of the attack, setup included); %s; rate %.0f vs %.0f events/s baseline (%.2fx; %.2fx of x-after's rate); "+
		"setup %.1f s; %s; %s; %s; %s; %s; a reader's wait for the first 10,000 events from the leader halfway through the attack's timed load: %s%s",
		o.verdict, rate, baseRate, ratio, rate/max(o.again.st.EventsPerSec(), 1),
		o.setup.Seconds(), b.readerSummary(o.hc, o.before, o.atEnd), o.readerTimeline, o.hc.appendSummary(o.before, o.atEnd), o.big.summary(h.bigAppenders), o.streamSummary, o.probe, o.moved)
	r2 := row("x-after", "c's producer again, after the hostile clients closed", o.again, o.li, "attacked")
	r2.Note += fmt.Sprintf("; before it: the leader ended the readers' calls %.1f s after their connections closed, and 5 s later (RSS / heap in use, MiB): %s",
		o.drained.Seconds(), b.memList(o.after, o.li, "attacked"))
	return []bench.Result{r0, r1, r2}
}

// hostileVerdict says whether the goals are met, and by how much not.
func hostileVerdict(leaderRSS, ratio float64) string {
	var parts []string
	if leaderRSS < hostileRSSGoalMiB {
		parts = append(parts, fmt.Sprintf("RSS goal met (leader peak %.0f MiB < %d MiB)", leaderRSS, hostileRSSGoalMiB))
	} else {
		parts = append(parts, fmt.Sprintf("RSS goal MISSED (leader peak %.0f MiB, %.0f MiB over %d MiB)", leaderRSS, leaderRSS-hostileRSSGoalMiB, hostileRSSGoalMiB))
	}
	if ratio >= hostileRateGoal {
		parts = append(parts, fmt.Sprintf("rate goal met (%.0f%% of baseline, within 20%%)", 100*ratio))
	} else {
		parts = append(parts, fmt.Sprintf("rate goal MISSED (%.0f%% of baseline, %.0f points below 80%%)", 100*ratio, 100*(hostileRateGoal-ratio)))
	}
	return strings.Join(parts, ", ")
}

// hostileConns are the open hostile connections and what was sent on them.
// Once a connection's calls are open, a watcher of its own writes a
// one-byte connection WINDOW_UPDATE every 500 ms, which fails once the
// node has reset the connection; with --hostile-redial a reader
// connection is then dialled again and its streams opened again, as a
// persistent attacker would.
type hostileConns struct {
	stop     chan struct{} // closed by close: the watchers end
	stopOnce sync.Once
	wg       sync.WaitGroup // the watchers

	mu          sync.Mutex
	conns       []*rawH2
	dialed      [2]int             // connections opened: readers', appends' (redials included)
	resets      [2][]time.Duration // life of each connection the node reset, from its dial until a write found it gone
	resetErr    [2]string
	readers     int   // Read calls whose headers and request were written (reopened ones included)
	appendsSent int   // Append calls whose whole share of body was written
	appendsCut  int   // Append calls whose body a write error cut short
	appendBytes int64 // body bytes of Appends written in all
	errs        []string
}

// hostileSet is one kind of hostile call and how to count it.
type hostileSet struct {
	id          int // 0 readers, 1 appends
	path, token string
	body        []byte
	end         bool // end the request side (readers) or leave it half-sent
	redial      bool
	done        func(hc *hostileConns, n int, err error) // under hc.mu
}

// openHostile opens the stalled readers and the half-sent appends on the
// node at addr, each set on its connections in parallel, and returns once
// everything was written (or a write failed). The watchers go on until
// close.
func (b *benchRun) openHostile(ctx context.Context, addr string) *hostileConns {
	h := b.f.hostile
	hc := &hostileConns{stop: make(chan struct{})}
	readers := hostileSet{id: 0, path: pb.EventStore_Read_FullMethodName, token: b.lc.sec.readToken,
		body: grpcFrame(0, 0), end: true, redial: h.redial, // an empty ReadRequest: from offset 0 to the end of the log
		done: func(hc *hostileConns, _ int, err error) {
			if err == nil {
				hc.readers++
			}
		}}
	appends := hostileSet{id: 1, path: pb.EventStore_Append_FullMethodName, body: grpcFrame(hostileAnnounced, h.appendBytes),
		done: func(hc *hostileConns, n int, err error) {
			hc.appendBytes += int64(max(0, n-5))
			if err == nil {
				hc.appendsSent++
			} else if n > 0 {
				hc.appendsCut++
			}
		}}
	var setup sync.WaitGroup
	for _, x := range []struct {
		set          hostileSet
		conns, calls int
	}{{readers, h.readerConns, h.readers}, {appends, h.appendConns, h.appends}} {
		for i := range min(x.conns, x.calls) {
			k := x.calls / x.conns
			if i < x.calls%x.conns {
				k++
			}
			setup.Go(func() {
				if r := hc.openConn(ctx, addr, b.lc.sec.tls, x.set, k); r != nil {
					hc.wg.Go(func() { hc.watch(ctx, addr, b.lc.sec.tls, x.set, k, r) })
				}
			})
		}
	}
	setup.Wait()
	return hc
}

// openConn dials one connection and opens k calls of set on it; nil if the
// dial failed.
func (hc *hostileConns) openConn(ctx context.Context, addr string, tlsCfg *tls.Config, set hostileSet, k int) *rawH2 {
	r, err := dialRawH2(ctx, addr, tlsCfg, time.Now().Add(time.Minute))
	if err != nil {
		hc.fail(err)
		return nil
	}
	hc.mu.Lock()
	hc.conns = append(hc.conns, r)
	hc.dialed[set.id]++
	hc.mu.Unlock()
	for range k {
		n, err := r.call(set.path, set.token, set.body, set.end)
		hc.mu.Lock()
		set.done(hc, n, err)
		hc.mu.Unlock()
		if err != nil {
			hc.fail(err)
			break
		}
	}
	return r
}

// watch finds out when the node resets r, and then redials if set says so.
func (hc *hostileConns) watch(ctx context.Context, addr string, tlsCfg *tls.Config, set hostileSet, k int, r *rawH2) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-hc.stop:
			return
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := r.poke()
		if err == nil {
			continue
		}
		hc.mu.Lock()
		hc.resets[set.id] = append(hc.resets[set.id], time.Since(r.dialed))
		hc.resetErr[set.id] = err.Error()
		hc.mu.Unlock()
		r.close()
		if !set.redial {
			return
		}
		select {
		case <-hc.stop:
			return
		default:
		}
		if r = hc.openConn(ctx, addr, tlsCfg, set, k); r == nil {
			return
		}
	}
}

func (hc *hostileConns) fail(err error) {
	hc.mu.Lock()
	defer hc.mu.Unlock()
	if len(hc.errs) < 3 {
		hc.errs = append(hc.errs, err.Error())
	}
}

// resetNote says how many connections of a set the node reset, and when.
func (hc *hostileConns) resetNote(set int) string {
	hc.mu.Lock()
	defer hc.mu.Unlock()
	rs := hc.resets[set]
	if len(rs) == 0 {
		return "the node reset none of their connections"
	}
	lo, hi := rs[0], rs[0]
	for _, d := range rs {
		lo, hi = min(lo, d), max(hi, d)
	}
	return fmt.Sprintf("the node RESET %d of their connections, each %.1f-%.1f s after it was dialled (%s)", len(rs), lo.Seconds(), hi.Seconds(), hc.resetErr[set])
}

// close stops the watchers and closes every connection; it may be called
// again.
func (hc *hostileConns) close() {
	hc.stopOnce.Do(func() { close(hc.stop) })
	hc.wg.Wait()
	hc.mu.Lock()
	defer hc.mu.Unlock()
	for _, r := range hc.conns {
		r.close()
	}
	hc.conns = nil
}

// Series of the leader's metrics about Read and Append calls.
var (
	readSeries    = []string{`grpc_method="Read"`, `grpc_service="tsstore.v1.EventStore"`}
	readStarted   = "grpc_server_started_total"
	readHandled   = "grpc_server_handled_total"
	authRefused   = "tsstore_auth_refused_total"
	readBytesSent = "tsstore_read_bytes_sent_total"
)

// readersIn counts, between two scrapes of the leader's metrics, the Read
// calls that reached the handler and those that ended (by code).
func readersIn(before, now map[string]float64) (reached float64, ended map[string]float64) {
	reached = sumSeries(now, readStarted, readSeries...) - sumSeries(before, readStarted, readSeries...)
	ended = map[string]float64{}
	for key, v := range now {
		if seriesName(key) != readHandled || !hasLabels(key, readSeries...) {
			continue
		}
		if d := v - before[key]; d > 0 {
			ended[labelValue(key, "grpc_code")] += d
		}
	}
	return reached, ended
}

// waitReaders waits (up to 30 s) until the leader has seen every opened
// reader: it reached the Read handler or was refused on its headers.
func (b *benchRun) waitReaders(ctx context.Context, li int, before map[string]float64, opened int) int {
	deadline := time.Now().Add(30 * time.Second)
	seen := 0
	for ctx.Err() == nil && time.Now().Before(deadline) {
		now, err := scrapeSeries(ctx, b.lc.metrics[li])
		if err == nil {
			reached, _ := readersIn(before, now)
			refused := sumSeries(now, authRefused, `grpc_method="Read"`) - sumSeries(before, authRefused, `grpc_method="Read"`)
			if seen = int(reached); seen+int(refused) >= opened {
				break
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return seen
}

// readerSummary says what the leader did with the stalled readers.
func (b *benchRun) readerSummary(hc *hostileConns, before, atEnd map[string]float64) string {
	reached, ended := readersIn(before, atEnd)
	total := 0.0
	var codes []string
	for code, n := range ended {
		total += n
		codes = append(codes, fmt.Sprintf("%s %.0f", code, n))
	}
	refused := sumSeries(atEnd, authRefused, `grpc_method="Read"`) - sumSeries(before, authRefused, `grpc_method="Read"`)
	bytes := sumSeries(atEnd, readBytesSent, `rpc="Read"`) - sumSeries(before, readBytesSent, `rpc="Read"`)
	hc.mu.Lock()
	opened, conns, errs := hc.readers, min(hc.dialed[0], b.f.hostile.readerConns), hc.errs
	hc.mu.Unlock()
	s := fmt.Sprintf("stalled readers: %d opened on %d connections, %.0f accepted (reached the Read handler), %.0f still open at the end of the phase, %.0f refused on their headers by auth",
		opened, conns, reached, reached-total, refused)
	if len(codes) > 0 {
		s += ", ended: " + strings.Join(codes, ", ")
	}
	if n := float64(opened) - reached - refused; n > 0 {
		s += fmt.Sprintf(", %.0f never reached a handler (HTTP/2 refused or not yet read)", n)
	}
	s += fmt.Sprintf(", %.1f MiB of batches handed to them; %s", bytes/(1<<20), hc.resetNote(0))
	if hc.dialed[0] > 0 && b.f.hostile.redial {
		s += fmt.Sprintf(", redialled with their streams reopened (%d dials in all)", hc.dialed[0])
	}
	if len(errs) > 0 {
		s += ", client errors: " + strings.Join(errs, "; ")
	}
	return s
}

// appendSummary says what the leader did with the half-sent appends.
func (hc *hostileConns) appendSummary(before, atEnd map[string]float64) string {
	unauth := sumSeries(atEnd, authRefused, `code="Unauthenticated"`, `grpc_method="Append"`) -
		sumSeries(before, authRefused, `code="Unauthenticated"`, `grpc_method="Append"`)
	return fmt.Sprintf("half-sent appends: %d on %d connections sent their bytes (%.0f MiB in all), %d were cut short by a write error; the leader refused %.0f Unauthenticated (tsstore_auth_refused_total, decided on headers); %s",
		hc.appendsSent, hc.dialed[1], float64(hc.appendBytes)/(1<<20), hc.appendsCut, unauth, hc.resetNote(1))
}

// memoryAfter waits (up to 30 s) for the leader to end the readers' calls
// once their connections are closed, then samples memory for 5 s and
// returns the last sample of each node and how long the calls took to end.
func (b *benchRun) memoryAfter(ctx context.Context, li int, before map[string]float64) ([]nodeMem, time.Duration) {
	start := time.Now()
	for ctx.Err() == nil && time.Since(start) < 30*time.Second {
		now, err := scrapeSeries(ctx, b.lc.metrics[li])
		if err == nil {
			reached, ended := readersIn(before, now)
			total := 0.0
			for _, n := range ended {
				total += n
			}
			if reached-total <= 0 {
				break
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	drained := time.Since(start)
	mem := b.sampleMemory(ctx)
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
	}
	_, last := mem.stop()
	return last, drained
}

// probeMidway runs readProbe halfway through --duration, in the middle of
// the timed load that starts now (away from its start and from the
// node's resets of stalled connections, 20 s after their dial); the
// returned func waits for its outcome.
func (b *benchRun) probeMidway(ctx context.Context, addr string) func() string {
	out := make(chan string, 1)
	go func() { // owned by the returned func, which waits for it
		select {
		case <-ctx.Done():
			out <- ctx.Err().Error()
			return
		case <-time.After(b.f.duration / 2):
		}
		out <- b.readProbe(ctx, addr)
	}()
	return func() string { return <-out }
}

// readProbe times how long a well-behaved reader with the read token
// waits for the first 10,000 events of the log from the node at addr. It
// subscribes (from offset 0, cancelled once it has them) rather than
// reads, so that the attacked node's Read metrics count only the hostile
// readers; both go through the same send budget. It takes messages as
// large as the SDK does (a message may hold a batch of up to
// record.MaxBatchSize).
func (b *benchRun) readProbe(ctx context.Context, addr string) string {
	conn, err := b.lc.dial(addr)
	if err != nil {
		return err.Error()
	}
	defer conn.Close()
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	start := time.Now()
	stream, err := pb.NewEventStoreClient(conn).Subscribe(cctx, &pb.ReadRequest{}, grpc.MaxCallRecvMsgSize(record.MaxBatchSize+1<<20))
	if err != nil {
		return fmt.Sprintf("failed: %v", err)
	}
	for {
		m, err := stream.Recv()
		if err != nil {
			return fmt.Sprintf("failed after %.0f ms: %v", bench.Ms(time.Since(start)), err)
		}
		if m.GetNextOffset() >= 10000 {
			return fmt.Sprintf("%.0f ms", bench.Ms(time.Since(start)))
		}
	}
}

// heapProfile, with --profile, saves the node's heap profile (after a
// GC: what is live) and its goroutines (debug=1: counted by stack).
func (b *benchRun) heapProfile(ctx context.Context, i int, id string) {
	if b.f.profile == "" {
		return
	}
	node := b.lc.c.Nodes[i]
	addr := pprofAddr(node.Logs())
	if addr == "" {
		return
	}
	for _, p := range []struct{ query, file string }{
		{"heap?gc=1", "heap.pprof"},
		{"goroutine?debug=1", "goroutines.txt"},
	} {
		path := filepath.Join(b.f.profile, fmt.Sprintf("%s-leader-%s-%s", id, node.ID, p.file))
		if err := fetchTo(ctx, "http://"+addr+"/debug/pprof/"+p.query, path); err != nil {
			fmt.Fprintf(b.log, "bench: %s of %s: %v\n", p.file, node.ID, err)
			continue
		}
		fmt.Fprintf(b.log, "bench: wrote %s\n", path)
	}
}
