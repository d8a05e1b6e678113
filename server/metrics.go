package server

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc/status"

	"github.com/tsstore/tsstore/internal/version"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/tiering"
)

// nodeMetrics holds one node's Prometheus metrics. Every node has its own
// registry (never the global default one), so several nodes in one
// process (tests) do not collide; every series carries a node label.
// The metrics always exist and cost an atomic add each; Config.MetricsAddr
// only decides whether they are served over HTTP. docs/operations.md lists
// them all.
//
// Values that already live elsewhere (Raft state, offsets, segments) are
// not copied into gauges on every change: stateCollector (metrics_collect.go)
// reads them at scrape time.
type nodeMetrics struct {
	reg  *prometheus.Registry
	regr prometheus.Registerer // reg, adding the node label
	grpc *grpcprom.ServerMetrics

	// Append RPC, counted where the request is decided: on the leader
	// (also for requests a follower forwarded to it) or on a follower that
	// rejects it before forwarding. A follower counts what it forwards in
	// appendForwarded only, so summing appendRequests over the cluster
	// counts every client request once.
	appendRequests   *prometheus.CounterVec // by gRPC code
	appendEvents     *prometheus.CounterVec // by gRPC code
	appendForwarded  *prometheus.CounterVec // by gRPC code
	appendDuplicates prometheus.Counter
	appendDuration   prometheus.Histogram

	// Group commit (proposer).
	entryRequests   prometheus.Histogram
	entryEvents     prometheus.Histogram
	entryBytes      prometheus.Histogram
	entriesInflight prometheus.Gauge

	// Read and Subscribe.
	read, subscribe *readMetrics
	subscriptions   prometheus.Gauge
	slowConsumers   prometheus.Counter
	stalledConnsCut prometheus.Counter
	// requestsRefused counts append requests refused by the request
	// budgets (reqbudget.go), by the flag of the cap.
	requestsRefused *prometheus.CounterVec
	// stalledRequestConnsCut counts connections closed for a stalled
	// append request body (stallcut.go).
	stalledRequestConnsCut prometheus.Counter

	// authRefused counts calls refused by authentication, by method and
	// code; most are refused on their headers (auth.go, tapHandle), before
	// grpc's own metrics see them.
	authRefused *prometheus.CounterVec
	// appendThrottled counts the seconds appends waited for their token's
	// append quota, by token name (quota.go).
	appendThrottled *prometheus.CounterVec

	// compactionHold: how long compaction, retention and tiering held up
	// the apply path, by section (fsm.Config.OnHold); compactionHoldMax
	// the longest since the node started. The goal: no more than one
	// fsync.
	compactionHold    *prometheus.HistogramVec
	compactionHoldMax *prometheus.GaugeVec
	holdMaxMu         sync.Mutex
	holdMax           map[string]float64
	// raftStore times the Raft log's appends (one write and one fsync,
	// as etcd's wal_fsync_duration_seconds); raftStoreMax the longest.
	raftStore    prometheus.Histogram
	raftStoreMax prometheus.Gauge
	raftStoreTop atomic.Int64 // nanoseconds, the longest so far

	// Raft and snapshots.
	leaderChanges   prometheus.Counter
	persistDuration prometheus.Histogram
	persistErrors   prometheus.Counter

	// Training runs (runsnap.go).
	snapshotSendsDeferred prometheus.Counter
	// raftAppendsSplit counts append RPCs this leader cut to raft's
	// append byte bound (snapGuard.AppendEntries).
	raftAppendsSplit prometheus.Counter

	runSnapshots      prometheus.Counter
	runSnapshotsStuck prometheus.Counter

	// repairs counts repairs of damaged sealed segments, by result
	// (repaired, failed); repair.go.
	repairs *prometheus.CounterVec

	// Retention (retention.go): cuts this node committed as leader, and
	// the bytes of the sealed segments they dropped.
	retentionCuts  prometheus.Counter
	retentionBytes prometheus.Counter
	runThins       prometheus.Counter

	// Cold tiering (tiering.go): what this node uploaded and committed as
	// leader, failed attempts, PUT latency, and the backlog its manifest
	// shows (segments the policy sends to the store, not yet tiered).
	tierSegments        prometheus.Counter
	tierUploadedBytes   prometheus.Counter
	tierFailures        prometheus.Counter
	tierPutSeconds      prometheus.Histogram
	tierBacklogSegments prometheus.Gauge
	tierBacklogBytes    prometheus.Gauge
	tierSwept           prometheus.Counter
	// Reads of tiered segments (tier_evict.go, tiering.Cache) and the
	// eviction of local copies, on every node.
	tierGetSeconds      prometheus.Histogram
	tierFetchedBytes    prometheus.Counter
	tierGetFailures     prometheus.Counter
	tierEvictedSegments prometheus.Counter
	tierEvictedBytes    prometheus.Counter
	tierEvictRefused    prometheus.Counter

	// The HTTP endpoint; nil when MetricsAddr is empty.
	lis net.Listener
	srv *http.Server
}

// readMetrics are the metrics of one streaming RPC (Read or Subscribe).
type readMetrics struct {
	events   prometheus.Counter
	bytes    prometheus.Counter
	duration prometheus.Observer
}

// Histogram buckets, in the metric's unit.
var (
	latencyBuckets = prometheus.ExponentialBuckets(0.0005, 2, 16)  // 0.5 ms .. 16 s
	countBuckets   = prometheus.ExponentialBuckets(1, 2, 17)       // 1 .. 65536
	sizeBuckets    = prometheus.ExponentialBuckets(256, 4, 9)      // 256 B .. 16 MiB
	readBuckets    = prometheus.ExponentialBuckets(0.0001, 2, 17)  // 0.1 ms .. 6.5 s
	holdBuckets    = prometheus.ExponentialBuckets(0.00001, 2, 18) // 10 µs .. 1.3 s
	persistBuckets = prometheus.ExponentialBuckets(0.001, 2, 16)   // 1 ms .. 32 s
)

func newNodeMetrics(n *Node) *nodeMetrics {
	reg := prometheus.NewRegistry()
	m := &nodeMetrics{reg: reg, regr: prometheus.WrapRegistererWith(prometheus.Labels{"node": n.cfg.NodeID}, reg)}
	f := promFactory{m.regr}

	m.appendRequests = f.counterVec("tsstore_append_requests_total",
		"Append requests decided by this node, by gRPC status code (requests this node forwarded to the leader are in tsstore_append_forwarded_total).", "code")
	m.appendEvents = f.counterVec("tsstore_append_events_total",
		"Events in the Append requests counted by tsstore_append_requests_total, by gRPC status code.", "code")
	m.appendForwarded = f.counterVec("tsstore_append_forwarded_total",
		"Append requests this follower forwarded to the leader, by the leader's gRPC status code.", "code")
	for _, v := range []*prometheus.CounterVec{m.appendRequests, m.appendEvents, m.appendForwarded} {
		v.WithLabelValues("OK")
	}
	m.appendDuplicates = f.counter("tsstore_append_duplicate_requests_total",
		"Append requests answered with the offsets of an earlier commit (producer retries); nothing was written.")
	m.appendDuration = f.histogram("tsstore_append_duration_seconds",
		"Time from Append handler entry to the answer, for acknowledged appends decided by this node, in seconds.", latencyBuckets)

	m.entryRequests = f.histogram("tsstore_group_commit_requests_per_entry",
		"Append requests coalesced into one Raft entry by group commit.", countBuckets)
	m.entryEvents = f.histogram("tsstore_group_commit_events_per_entry",
		"Events in one Raft entry proposed by group commit.", countBuckets)
	m.entryBytes = f.histogram("tsstore_group_commit_entry_bytes",
		"Size of one encoded Raft entry proposed by group commit, in bytes.", sizeBuckets)
	m.entriesInflight = f.gauge("tsstore_group_commit_entries_inflight",
		"Raft entries proposed by group commit and not yet answered (bounded by MaxInflightEntries).")

	sent := f.counterVec("tsstore_read_events_sent_total",
		"Events in the record batches sent to readers, by RPC (Read or Subscribe).", "rpc")
	bytes := f.counterVec("tsstore_read_bytes_sent_total",
		"Record batch bytes sent to readers, by RPC (Read or Subscribe).", "rpc")
	dur := f.histogramVec("tsstore_read_message_duration_seconds",
		"Time to read, filter and send one Read or Subscribe message (including waiting on gRPC flow control), in seconds.", readBuckets, "rpc")
	rm := func(rpc string) *readMetrics {
		return &readMetrics{events: sent.WithLabelValues(rpc), bytes: bytes.WithLabelValues(rpc), duration: dur.WithLabelValues(rpc)}
	}
	m.read, m.subscribe = rm("Read"), rm("Subscribe")
	m.subscriptions = f.gauge("tsstore_subscriptions_active",
		"Subscribe calls being served.")
	m.appendThrottled = f.counterVec("tsstore_append_throttled_seconds_total",
		"Seconds this node waited before reading a token's next append request because the token was over its append-rate quota (tokens file), by token name.", "token")
	m.authRefused = f.counterVec("tsstore_auth_refused_total",
		"Calls refused by token authentication (Unauthenticated, PermissionDenied), by method, usually before their body was read.", "grpc_method", "code")
	m.slowConsumers = f.counter("tsstore_subscriptions_slow_consumer_total",
		"Subscriptions ended with ResourceExhausted/SLOW_CONSUMER for falling more than MaxSubscriberLag offsets behind.")

	m.stalledConnsCut = f.counter("tsstore_read_stalled_conns_closed_total",
		"Client connections closed because their Read or Subscribe messages stopped leaving for send-stall-timeout while other readers waited for the node's send budget.")

	m.requestsRefused = f.counterVec("tsstore_append_requests_refused_total",
		"Append requests refused with ResourceExhausted because reading or holding them would pass a request budget, by cap: conn-request-bytes or node-request-bytes.", "cap")

	m.stalledRequestConnsCut = f.counter("tsstore_append_stalled_conns_closed_total",
		"Client connections closed because an append request being read received no byte for send-stall-timeout, or less than request-min-rate bytes a second over a window of it, while other appends waited for the node's request budget.")

	m.leaderChanges = f.counter("tsstore_raft_leader_changes_total",
		"Times this node observed a new leader being established (a leader id different from the previous observation, including after a period without leader).")
	m.compactionHold = f.histogramVec("tsstore_compaction_append_hold_seconds",
		"How long compaction, retention or tiering held up this node's apply path each time it did, in seconds, by section: apply (applying a retention, compaction, deletion or tiering entry), worker_sync (the compaction worker's log fsync before it checkpoints a cut or rewrites, with its wait for the writer), publish (a rewrite's renames and directory fsync, which a snapshot being taken waits for), drop and swap (the segment list change).",
		holdBuckets, "section")
	m.compactionHoldMax = f.gaugeVec("tsstore_compaction_append_hold_max_seconds",
		"The longest hold of tsstore_compaction_append_hold_seconds since the node started, by section, in seconds.", "section")
	m.holdMax = map[string]float64{}
	m.raftStore = f.histogram("tsstore_raft_log_append_seconds",
		"Time of one append to this node's Raft log (raft-wal: one write and one fsync of a batch of entries), in seconds.", holdBuckets)
	m.raftStoreMax = f.gauge("tsstore_raft_log_append_max_seconds",
		"The longest append to this node's Raft log since it started, in seconds.")
	m.persistDuration = f.histogram("tsstore_fsm_snapshot_persist_duration_seconds",
		"Duration of successful FSM snapshot Persist calls (header, segment hard links, sink close with fsync), in seconds.", persistBuckets)
	m.persistErrors = f.counter("tsstore_fsm_snapshot_persist_errors_total",
		"FSM snapshot Persist calls that failed.")
	m.snapshotSendsDeferred = f.counter("tsstore_raft_snapshot_sends_deferred_total",
		"InstallSnapshot sends this leader skipped because the target reported it cannot persist (disk below min-free-bytes, Raft log writes failing); raft retries them with backoff.")
	m.raftAppendsSplit = f.counter("tsstore_raft_append_rpcs_split_total",
		"Raft append RPCs this leader cut short because their entries passed max-inflight-bytes; the rest go in the next RPC (a follower catching up on a log of large entries).")
	m.runSnapshots = f.counter("tsstore_run_snapshots_total",
		"Training-run state snapshots this node proposed as leader and saw committed.")
	m.runSnapshotsStuck = f.counter("tsstore_run_snapshots_stuck_total",
		"Runs whose snapshots this leader stopped because the fold could not take one of their events (a newer schema version, a malformed payload) or their start is compacted away; see the log for which.")

	m.retentionCuts = f.counter("tsstore_retention_cuts_total",
		"Retention cuts this node planned as leader and saw committed; every replica drops the sealed segments below each.")
	m.retentionBytes = f.counter("tsstore_retention_reclaimed_bytes_total",
		"Bytes of the sealed segments dropped by the retention cuts this node committed as leader (the space comes back on every replica once no snapshot links the files).")
	m.runThins = f.counter("tsstore_run_compaction_rewrites_committed_total",
		"Segment rewrites of run compaction this node planned as leader and saw committed; every replica rewrites the segment.")
	m.regr.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "tsstore_run_compaction_segments_rewritten_total",
		Help: "Sealed segments this node rewrote for run compaction since it started."},
		func() float64 { return float64(n.thinStats().Rewritten) }))
	m.regr.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "tsstore_run_compaction_reclaimed_bytes_total",
		Help: "Bytes this node's run compaction rewrites freed (size before minus after) since it started."},
		func() float64 { return float64(n.thinStats().BytesReclaimed) }))
	m.regr.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "tsstore_run_compaction_rewrite_failures_total",
		Help: "Committed rewrites this node could not reproduce byte for byte (the segment stays as it was; verify --cluster shows it)."},
		func() float64 { return float64(n.thinStats().Failed) }))
	m.tierSegments = f.counter("tsstore_tier_segments_total",
		"Sealed segments this node uploaded to the tier target as leader and saw committed as tiered.")
	m.tierUploadedBytes = f.counter("tsstore_tier_uploaded_bytes_total",
		"Bytes this node uploaded to the tier target as leader, segments and their index bundles (an upload whose commit failed counts too).")
	m.tierFailures = f.counter("tsstore_tier_failures_total",
		"Tiering attempts that failed (the store down or refusing, a commit refused); the segments stay local and the leader retries with backoff.")
	m.tierPutSeconds = f.histogram("tsstore_tier_put_duration_seconds",
		"Duration of successful segment uploads to the tier target, in seconds.", persistBuckets)
	m.tierBacklogSegments = f.gauge("tsstore_tier_backlog_segments",
		"Sealed segments the tiering policy sends to the store that are not tiered yet, per this node's manifest.")
	m.tierBacklogBytes = f.gauge("tsstore_tier_backlog_bytes",
		"Bytes of the sealed segments in tsstore_tier_backlog_segments.")
	m.tierSwept = f.counter("tsstore_tier_swept_objects_total",
		"Objects this node deleted as leader because an earlier leader uploaded them and never committed them.")
	m.tierGetSeconds = f.histogram("tsstore_tier_get_duration_seconds",
		"Duration of successful ranged GETs of tiered segments' blocks from the tier target, in seconds.", persistBuckets)
	m.tierFetchedBytes = f.counter("tsstore_tier_fetched_bytes_total",
		"Bytes of tiered segments this node read from the tier target (cache misses and prefetches).")
	m.tierGetFailures = f.counter("tsstore_tier_get_failures_total",
		"Ranged GETs of tiered segments that failed (the store down, a missing or short object); the read fails, nothing is served.")
	m.tierEvictedSegments = f.counter("tsstore_tier_evicted_segments_total",
		"Sealed segments whose local .log this node removed after their object checked out against the manifest (Head: size and checksum).")
	m.tierEvictedBytes = f.counter("tsstore_tier_evicted_bytes_total",
		"Bytes of the .log files in tsstore_tier_evicted_segments_total: local disk given back.")
	m.tierEvictRefused = f.counter("tsstore_tier_evict_refused_total",
		"Evictions refused because the object or the local copy does not match the committed size and checksum; the local copy stays.")
	cache := func() tiering.CacheStats {
		if n.tierCache == nil {
			return tiering.CacheStats{}
		}
		return n.tierCache.Stats()
	}
	m.regr.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "tsstore_tier_cache_hits_total",
		Help: "Block lookups of tiered segments served from the in-memory cache."},
		func() float64 { return float64(cache().Hits) }))
	m.regr.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "tsstore_tier_cache_misses_total",
		Help: "Block lookups of tiered segments that needed a GET (or waited for one in flight)."},
		func() float64 { return float64(cache().Misses) }))
	m.regr.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tsstore_tier_cache_bytes",
		Help: "Bytes of tiered segments' blocks held in the cache (capped by tier-cache-bytes)."},
		func() float64 { return float64(cache().CachedBytes) }))
	m.repairs = f.counterVec("tsstore_segment_repairs_total",
		"Repairs of damaged sealed segments by this node, by result: repaired (a peer's verified copy, or the local .log for a damaged index file, swapped in) or failed (no peer had a good copy, or none answered; retried).", "result")
	for _, r := range []string{repairRepaired, repairFailed} {
		m.repairs.WithLabelValues(r)
	}
	m.regr.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tsstore_segments_damaged",
		Help: "Sealed segments this node knows to be damaged and has not repaired yet (read at scrape time)."},
		func() float64 { return float64(n.damagedCount()) }))

	bi := version.Info()
	build := f.gaugeVec("tsstore_build_info",
		"Always 1; the labels say which build of tsstore this node runs (`tsstore version`).", "version", "revision", "go_version")
	build.WithLabelValues(bi.Version, bi.Revision, bi.GoVersion).Set(1)

	m.grpc = grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(grpcprom.WithHistogramBuckets(latencyBuckets)))
	m.regr.MustRegister(m.grpc, &stateCollector{n: n},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// promFactory creates metrics and registers them.
type promFactory struct{ r prometheus.Registerer }

func (f promFactory) counter(name, help string) prometheus.Counter {
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	f.r.MustRegister(c)
	return c
}

func (f promFactory) counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	f.r.MustRegister(c)
	return c
}

func (f promFactory) gauge(name, help string) prometheus.Gauge {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
	f.r.MustRegister(g)
	return g
}

func (f promFactory) gaugeVec(name, help string, labels ...string) *prometheus.GaugeVec {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, labels)
	f.r.MustRegister(g)
	return g
}

func (f promFactory) histogram(name, help string, buckets []float64) prometheus.Histogram {
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets})
	f.r.MustRegister(h)
	return h
}

func (f promFactory) histogramVec(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets}, labels)
	f.r.MustRegister(h)
	return h
}

// listen opens the metrics listener early in New, so that a bad or busy
// address fails the start before Raft runs.
func (m *nodeMetrics) listen(addr string) error {
	if addr == "" {
		return nil
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	m.lis = lis
	return nil
}

// closeListener releases the listener when New fails.
func (m *nodeMetrics) closeListener() {
	if m != nil && m.lis != nil {
		m.lis.Close()
	}
}

// startMetrics runs at the end of New, once the gRPC services are
// registered and Raft runs: it pre-creates the gRPC series, starts the
// leader-change observer and, if configured, bridges hashicorp/raft's
// metrics and serves GET /metrics.
func (n *Node) startMetrics() {
	m := n.metrics
	m.grpc.InitializeMetrics(n.grpc)
	n.goFunc(n.countLeaderChanges)
	if m.lis == nil {
		return
	}
	if sink, err := raftMetricsSink(); err != nil {
		n.logger.Warn("hashicorp/raft metrics are not exported", "error", err)
	} else if err := m.regr.Register(sink); err != nil {
		n.logger.Warn("hashicorp/raft metrics are not exported", "error", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(n.logger.Handler(), slog.LevelWarn),
		ErrorHandling: promhttp.ContinueOnError,
		Registry:      m.reg, // promhttp_metric_handler_errors_total
	}))
	m.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	n.goFunc(func() {
		if err := m.srv.Serve(m.lis); !errors.Is(err, http.ErrServerClosed) {
			n.logger.Error("metrics server stopped", "error", err)
		}
	})
	n.logger.Info("serving metrics", "addr", m.lis.Addr().String())
}

// stopMetrics shuts the HTTP endpoint down, letting a scrape in progress
// finish (up to a bound). Close calls it before Raft and storage stop,
// since a scrape reads both.
func (n *Node) stopMetrics() {
	if n.metrics.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := n.metrics.srv.Shutdown(ctx); err != nil {
		n.metrics.srv.Close()
	}
}

// MetricsAddr is the address GET /metrics is served on, or "" when
// Config.MetricsAddr is empty.
func (n *Node) MetricsAddr() string {
	if n.metrics == nil || n.metrics.lis == nil {
		return ""
	}
	return n.metrics.lis.Addr().String()
}

// appendObs measures one Append call from handler entry to answer.
type appendObs struct {
	m         *nodeMetrics
	start     time.Time
	events    int
	forwarded bool // this node forwarded the request to the leader
	duplicate bool
}

func (m *nodeMetrics) startAppend(req *pb.AppendRequest) appendObs {
	return appendObs{m: m, start: time.Now(), events: len(req.Events)}
}

func (o *appendObs) done(err error) {
	code := status.Code(err).String()
	if o.forwarded {
		o.m.appendForwarded.WithLabelValues(code).Inc()
		return
	}
	o.m.appendRequests.WithLabelValues(code).Inc()
	o.m.appendEvents.WithLabelValues(code).Add(float64(o.events))
	if err == nil {
		o.m.appendDuration.Observe(time.Since(o.start).Seconds())
		if o.duplicate {
			o.m.appendDuplicates.Inc()
		}
	}
}

// entryProposed records one group-commit entry handed to Raft; the
// proposer calls entryDone when it has answered the entry (or dropped it
// at shutdown).
func (m *nodeMetrics) entryProposed(props []*proposal, bytes int) {
	events := 0
	for _, q := range props {
		events += len(q.op.Events)
	}
	m.entryRequests.Observe(float64(len(props)))
	m.entryEvents.Observe(float64(events))
	m.entryBytes.Observe(float64(bytes))
	m.entriesInflight.Inc()
}

func (m *nodeMetrics) entryDone() { m.entriesInflight.Dec() }

// sentEvents records one message of events events and size bytes sent
// (err == nil) to a reader; a decoded read counts its events this way.
func (r *readMetrics) sentEvents(events, size int, start time.Time, err error) {
	if r == nil || err != nil {
		return
	}
	r.events.Add(float64(events))
	r.bytes.Add(float64(size))
	r.duration.Observe(time.Since(start).Seconds())
}

// observeHold records one hold of the apply path by compaction, retention
// or tiering (fsm.Config.OnHold).
func (m *nodeMetrics) observeHold(section string, held time.Duration) {
	sec := held.Seconds()
	m.compactionHold.WithLabelValues(section).Observe(sec)
	m.holdMaxMu.Lock()
	if sec > m.holdMax[section] {
		m.holdMax[section] = sec
		m.compactionHoldMax.WithLabelValues(section).Set(sec)
	}
	m.holdMaxMu.Unlock()
}

// observeRaftStore records one append to the Raft log (logStore.onStore).
func (m *nodeMetrics) observeRaftStore(d time.Duration) {
	m.raftStore.Observe(d.Seconds())
	for {
		top := m.raftStoreTop.Load()
		if int64(d) <= top {
			return
		}
		if m.raftStoreTop.CompareAndSwap(top, int64(d)) {
			// The top only grows, so the last Set writes the largest.
			m.raftStoreMax.Set(time.Duration(m.raftStoreTop.Load()).Seconds())
			return
		}
	}
}
