package jepsen

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"

	"github.com/tsstore/tsstore/internal/proccluster"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

// The tiering workload (scenario "tiering"): every node tiers sealed
// segments (64 KiB) to a real versitygw on loopback (objstore.go) as soon
// as more than TierHotBytes of them are local, and evicts its .log once
// the upload is committed, so most of the log lives only in the store
// while the usual nemesis kills and isolates nodes. Beside it a store
// nemesis runs its own schedule, every run all five store faults in a
// seeded order: the store down (versitygw SIGKILLed, restarted), slow
// (every request delayed), failing (a fraction of requests answered 500),
// an object deleted and a byte of an object flipped in the posix backend
// (only objects every node has evicted, so no node can answer from a
// local copy). A poller scrapes every node's tsstore_tier_* metrics. The
// final phase lets the backlog drain, restarts every node (their block
// caches are empty: every tiered read is a GET), and reads each node's
// log segment by segment. Rule 14 (tiercheck.go) judges it.

// TieringSpec is the scenario's store nemesis.
type TieringSpec struct {
	// Faults are the store faults; each runs once per run, in a seeded
	// order, for a duration drawn from Active, Quiet apart.
	Faults        []string
	Active, Quiet [2]time.Duration
	// Slow is the delay of the store-slow fault; ErrRate the fraction of
	// requests store-500 answers with 500.
	Slow    time.Duration
	ErrRate float64
}

// TieringRun is what the tiering workload saw (History).
type TieringRun struct {
	// Damaged are the objects the store nemesis deleted or flipped.
	Damaged []DamagedObject `json:"damaged,omitempty"`
	// Samples are the nodes' tsstore_tier_* metrics, polled.
	Samples []TierSample `json:"samples,omitempty"`
	// Drained: every node's backlog was 0 and every tiered segment
	// evicted before the final reads; DrainErr says what was left.
	Drained  bool   `json:"drained"`
	DrainErr string `json:"drain_error,omitempty"`
	// Verify is `tsstore verify --tiered` at the end (the leader reads
	// every tiered object); VerifyErr if it could not run.
	Verify    []TierObjectCheck `json:"verify,omitempty"`
	VerifyErr string            `json:"verify_error,omitempty"`
	// Proxy counts what the store proxy saw: requests, 500s injected,
	// 502s while versitygw was down.
	ProxyRequests, ProxyInjected, ProxyDown int64
}

// DamagedObject is one object the store nemesis damaged.
type DamagedObject struct {
	Key        string        `json:"key"`
	Base, Next uint64        // the segment's offsets
	Kind       string        `json:"kind"` // "deleted" or "flipped"
	Pos        int64         `json:"pos,omitempty"`
	At         time.Duration `json:"at_ns"`
}

// TierSample is one node's tier metrics at one time.
type TierSample struct {
	At   time.Duration `json:"at_ns"`
	Node string        `json:"node"`
	// Counters (since the node's process started) and the backlog gauge.
	Failures, Segments, Evicted, GetFailures, Backlog int64
}

// TierObjectCheck is one object `verify --tiered` read.
type TierObjectCheck struct {
	Key        string
	Base, Next uint64
	OK         bool
	Err        string `json:",omitempty"`
}

// ReplicaTier is one node's tiering state at the end.
type ReplicaTier struct {
	Manifest []TierSegment  `json:"manifest"`
	Digests  []TierDigest   `json:"digests,omitempty"`
	Ranges   []RangeRead    `json:"ranges"`
	Backlog  uint64         `json:"backlog_segments"`
	Err      string         `json:"error,omitempty"`
	Metrics  map[string]int `json:"-"`
}

// TierSegment is one manifest entry as a node reported it.
type TierSegment struct {
	Base, Next, Size uint64
	Digest           uint32
	State, Key       string
	Local            bool // the node still holds the .log
}

// TierDigest is one segment's digest as SegmentDigests read it now.
type TierDigest struct {
	Base                   uint64
	Digest, ManifestDigest uint32
	Err                    string `json:",omitempty"`
}

// RangeRead is one final read of [From, To): Got values came back; Err
// (with its gRPC Code) if it failed.
type RangeRead struct {
	From, To uint64
	Got      int
	Key      string `json:",omitempty"` // the segment's object key, if tiered
	Code     string `json:",omitempty"`
	Err      string `json:",omitempty"`
}

// lostValue stands for an offset of a range a final read refused (rule
// 14 judges the refusal; rules 1-9 skip the offset).
const lostValue = "\x00lost"

// gapValue reports whether v stands for an offset with no event to
// compare: below a retention cut, dropped by compaction, or refused as
// lost (rules 12, 13, 14 judge those).
func gapValue(v string) bool { return v == compactedValue || v == lostValue }

func (r *recorder) tiering(f func(*TieringRun)) {
	r.mu.Lock()
	if r.h.Tiering != nil {
		f(r.h.Tiering)
	}
	r.mu.Unlock()
}

func (t *TieringRun) clone() *TieringRun {
	if t == nil {
		return nil
	}
	c := *t
	c.Damaged = slices.Clone(t.Damaged)
	c.Samples = slices.Clone(t.Samples)
	c.Verify = slices.Clone(t.Verify)
	return &c
}

// tieringArgs: 64 KiB segments, at most two local sealed segments not
// yet tiered, a tiering tick every 200 ms and a short backoff (the
// backlog drains within a second of the store coming back), the smallest
// cache the defaults allow (5 blocks of 4 MiB), short store requests (a
// slow store times out). The Raft log keeps its default trailing entries,
// so a follower that falls behind catches up by InstallSnapshot; the
// snapshot stream (version 2) references tiered segments by key instead
// of carrying their bytes, so a damaged object does not stop it.
var tieringArgs = []string{"--segment-bytes", "65536",
	"--tier-hot-bytes", "131072", "--tier-interval", "200ms", "--tier-max-backoff", "1s",
	"--tier-cache-bytes", "20971520", "--tier-s3-request-timeout", "2s"}

// planStoreFaults draws the store nemesis's schedule in [from, to): every
// fault once, in a seeded order, the damaging ones (which need evicted
// segments) after the first.
func planStoreFaults(rng *rand.Rand, s *TieringSpec, from, to time.Duration) []PlannedFault {
	between := func(r [2]time.Duration) time.Duration {
		return r[0] + time.Duration(rng.Int64N(int64(r[1]-r[0])+1))
	}
	kinds := slices.Clone(s.Faults)
	rng.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
	if i := slices.IndexFunc(kinds, func(k string) bool { return k != "store-delete" && k != "store-flip" }); i > 0 {
		kinds[0], kinds[i] = kinds[i], kinds[0]
	}
	var plan []PlannedFault
	t := from + between(s.Quiet)
	for _, k := range kinds {
		p := PlannedFault{At: t, Kind: k, Duration: between(s.Active)}
		if t+p.Duration > to {
			break
		}
		plan = append(plan, p)
		t += p.Duration + between(s.Quiet)
	}
	return plan
}

// storeNemesis runs the store faults.
type storeNemesis struct {
	c     *cluster
	store *objectStore
	rec   *recorder
	rng   *rand.Rand
	spec  *TieringSpec
	logf  func(string, ...any)
}

func (n *storeNemesis) run(ctx context.Context, plan []PlannedFault) {
	defer n.heal()
	for _, p := range plan {
		sleepCtx(ctx, p.At-n.rec.now())
		if ctx.Err() != nil {
			return
		}
		f := Fault{Kind: p.Kind, Start: n.rec.now(), Target: "store"}
		n.inject(ctx, p, &f)
		f.End = n.rec.now()
		n.logf("  fault %-22s %-4s %8v..%-8v %s", f.Kind, f.Target, f.Start.Round(time.Millisecond), f.End.Round(time.Millisecond), f.Detail)
		n.rec.fault(f)
	}
}

// heal restarts versitygw and clears the proxy's mode.
func (n *storeNemesis) heal() {
	n.store.proxy.set(0, 0)
	if err := n.store.start(); err != nil {
		n.logf("  heal: %v", err)
	}
}

func (n *storeNemesis) inject(ctx context.Context, p PlannedFault, f *Fault) {
	switch p.Kind {
	case "store-down":
		n.store.kill()
		f.Detail = "versitygw SIGKILLed"
		sleepCtx(ctx, p.Duration)
		f.Detail += "; " + errText(n.store.start(), "restarted")
	case "store-slow":
		n.store.proxy.set(n.spec.Slow, 0)
		f.Detail = fmt.Sprintf("every request delayed %v", n.spec.Slow)
		sleepCtx(ctx, p.Duration)
		n.store.proxy.set(0, 0)
	case "store-500":
		n.store.proxy.set(0, n.spec.ErrRate)
		f.Detail = fmt.Sprintf("%.0f%% of requests answered 500", 100*n.spec.ErrRate)
		sleepCtx(ctx, p.Duration)
		n.store.proxy.set(0, 0)
	case "store-delete", "store-flip":
		f.Detail = n.damage(ctx, p)
	default:
		f.Detail = "unknown fault kind"
	}
}

// damage deletes or flips a byte of the object of a segment every node
// has evicted (waiting up to the fault's duration for one), and records
// it.
func (n *storeNemesis) damage(ctx context.Context, p PlannedFault) string {
	// A node down or cut off cannot say whether it evicted: wait for it,
	// up to the fault's duration and 5 s more.
	end := n.rec.now() + p.Duration + 5*time.Second
	for {
		seg, why := n.evictedEverywhere(ctx)
		if seg != nil {
			d := DamagedObject{Key: seg.Key, Base: seg.Base, Next: seg.Next, At: n.rec.now()}
			var err error
			if p.Kind == "store-delete" {
				d.Kind, err = "deleted", n.store.deleteObject(seg.Key)
			} else {
				d.Kind = "flipped"
				d.Pos, err = n.store.flipByte(seg.Key, n.rng)
			}
			if err != nil {
				return fmt.Sprintf("%s %s: %v", d.Kind, seg.Key, err)
			}
			n.rec.tiering(func(t *TieringRun) { t.Damaged = append(t.Damaged, d) })
			sleepCtx(ctx, d.At+p.Duration-n.rec.now())
			if d.Kind == "flipped" {
				return fmt.Sprintf("flipped byte %d of %s [%d, %d)", d.Pos, d.Key, d.Base, d.Next)
			}
			return fmt.Sprintf("deleted %s [%d, %d)", d.Key, d.Base, d.Next)
		}
		if n.rec.now() >= end || ctx.Err() != nil {
			return "no segment evicted on every node: " + why
		}
		sleepCtx(ctx, 200*time.Millisecond)
	}
}

// evictedEverywhere picks a tiered segment not yet damaged that every
// node reports evicted (no local copy).
func (n *storeNemesis) evictedEverywhere(ctx context.Context) (*TierSegment, string) {
	damaged := map[string]bool{}
	n.rec.tiering(func(t *TieringRun) {
		for _, d := range t.Damaged {
			damaged[d.Key] = true
		}
	})
	count := map[string]int{}
	var cands []TierSegment
	for _, node := range n.c.nodes {
		segs, _, err := tierManifest(ctx, node)
		if err != nil {
			return nil, fmt.Sprintf("%s: %v", node.ID, err)
		}
		for _, s := range segs {
			if s.State != "tiered" || s.Local || s.Key == "" || damaged[s.Key] {
				continue
			}
			if count[s.Key]++; count[s.Key] == len(n.c.nodes) {
				cands = append(cands, s)
			}
		}
	}
	if len(cands) == 0 {
		return nil, "none yet"
	}
	s := cands[n.rng.IntN(len(cands))]
	return &s, ""
}

// tierManifest asks a node for its manifest and backlog.
func tierManifest(ctx context.Context, n *proccluster.Node) ([]TierSegment, uint64, error) {
	if !n.Running() {
		return nil, 0, fmt.Errorf("not running")
	}
	var segs []TierSegment
	var backlog uint64
	err := withConn(n, func(conn *grpc.ClientConn) error {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		lr, err := pb.NewRetentionClient(conn).ListRetention(ctx, &pb.ListRetentionRequest{})
		if err != nil {
			return err
		}
		backlog = lr.TierBacklogSegments
		for _, s := range lr.Segments {
			segs = append(segs, TierSegment{Base: s.BaseOffset, Next: s.NextOffset, Size: s.SizeBytes, Digest: s.Digest,
				State: s.State, Key: s.ObjectKey, Local: s.LocalCopy})
		}
		return nil
	})
	return segs, backlog, err
}

// metricsPoller scrapes every running node's tier metrics every 300 ms
// until stop.
type metricsPoller struct {
	c     *cluster
	rec   *recorder
	addrs map[string]string // node ID -> metrics host:port
}

func (m *metricsPoller) run(stop context.Context) {
	hc := &http.Client{Timeout: time.Second}
	for stop.Err() == nil {
		for _, n := range m.c.nodes {
			if !n.Running() {
				continue
			}
			v, err := scrapeTier(hc, m.addrs[n.ID])
			if err != nil {
				continue
			}
			s := TierSample{At: m.rec.now(), Node: n.ID, Failures: v["tsstore_tier_failures_total"],
				Segments: v["tsstore_tier_segments_total"], Evicted: v["tsstore_tier_evicted_segments_total"],
				GetFailures: v["tsstore_tier_get_failures_total"], Backlog: v["tsstore_tier_backlog_segments"]}
			m.rec.tiering(func(t *TieringRun) { t.Samples = append(t.Samples, s) })
		}
		sleepCtx(stop, 300*time.Millisecond)
	}
}

// scrapeTier reads the tsstore_tier_* samples of one node's /metrics
// (labelled only with the node).
func scrapeTier(hc *http.Client, addr string) (map[string]int64, error) {
	resp, err := hc.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("metrics: %s", resp.Status)
	}
	out := map[string]int64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "tsstore_tier_") {
			continue
		}
		// name{node="n1"} value: the node's registry labels every sample.
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		name, val := line[:i], line[i+1:]
		if j := strings.IndexByte(name, '{'); j >= 0 {
			if strings.Contains(name[j:], ",") {
				continue // a labelled series of a vector
			}
			name = name[:j]
		}
		f, err := strconv.ParseFloat(val, 64)
		if err == nil {
			out[name] = int64(f)
		}
	}
	return out, sc.Err()
}

// tieringSetup starts the object store before the nodes and gives every
// node its store arguments and a metrics address.
type tieringSetup struct {
	store   *objectStore
	metrics map[string]string
}

func (ts *tieringSetup) prepare(ctx context.Context, dir string, seed uint64) func([]*proccluster.Node) error {
	return func(nodes []*proccluster.Node) error {
		// The nodes' ports are laid out but not bound yet: keep
		// versitygw and the metrics listeners off them.
		taken := map[string]bool{}
		for _, n := range nodes {
			taken[n.RaftAddr], taken[n.APIAddr] = true, true
		}
		var err error
		if ts.store, err = startObjectStore(ctx, dir, seed, taken); err != nil {
			return err
		}
		ts.metrics = map[string]string{}
		for _, n := range nodes {
			if ts.metrics[n.ID], err = freeAddr(taken); err != nil {
				return err
			}
			n.AddArgs(ts.store.serveArgs()...)
			n.AddArgs("--metrics-addr", ts.metrics[n.ID])
		}
		return nil
	}
}

// runTiering starts the store nemesis (until nctx is done) and the
// metrics poller beside the usual nemesis. waitNemesis waits for the
// store nemesis (which heals the store when it ends); stopPoller stops
// the poller and waits for it.
func runTiering(ctx, nctx context.Context, cfg Config, c *cluster, ts *tieringSetup, rec *recorder, seed uint64,
	from, to time.Duration, res *Result, logf func(string, ...any)) (waitNemesis, stopPoller func()) {
	spec := cfg.Scenario.Tiering
	rng := rand.New(rand.NewPCG(seed, 43))
	plan := planStoreFaults(rng, spec, from, to)
	res.Schedule = append(res.Schedule, plan...)
	sn := &storeNemesis{c: c, store: ts.store, rec: rec, rng: rng, spec: spec, logf: logf}
	mp := &metricsPoller{c: c, rec: rec, addrs: ts.metrics}
	pctx, cancel := context.WithCancel(ctx)
	var nwg, pwg sync.WaitGroup
	nwg.Add(1)
	pwg.Add(1)
	go func() { defer nwg.Done(); sn.run(nctx, plan) }()
	go func() { defer pwg.Done(); mp.run(pctx) }()
	return nwg.Wait, func() { cancel(); pwg.Wait() }
}
