package server

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"
	"google.golang.org/grpc"

	"github.com/tsstore/tsstore/fsm"
	"github.com/tsstore/tsstore/internal/ratelog"
	"github.com/tsstore/tsstore/internal/version"
	"github.com/tsstore/tsstore/segment"
	"github.com/tsstore/tsstore/tiering"
)

// ErrWrongCluster is returned when the data directory belongs to another
// cluster or another node id.
var ErrWrongCluster = errors.New("data directory belongs to another cluster or node")

// ErrConfig marks New's errors of the configuration itself
// (Config.Validate): invalid settings, unusable or unsafe TLS and token
// files. Starting again with the same configuration cannot succeed.
var ErrConfig = errors.New("config")

// Node is one running tsstore server: storage, Raft, and the gRPC API.
type Node struct {
	// runNoop remembers run compaction rewrites that would drop nothing
	// (base/stream/upto), so the leader does not read them again.
	runNoop struct {
		sync.Mutex
		m map[string]bool
	}
	cfg    Config
	logger *slog.Logger
	// started is when New began (open time in the logs).
	started time.Time
	// incarnation is the random id of this data directory (identity.go).
	incarnation string
	// hb is, on the leader, the peers its heartbeats fail to (membership.go).
	hb heartbeats

	proc  *fsm.Processor
	raft  *raft.Raft
	trans *raft.NetworkTransport
	// stable is raft.db (term and vote), logs the Raft log in raft-wal
	// (raftstores.go, logstore.go).
	stable *raftboltdb.BoltStore
	logs   *logStore
	snaps  *fsm.SnapshotStore
	// tierCache reads tiered segments (tier_evict.go); nil when tiering
	// is off.
	tierCache *tiering.Cache

	grpc     *grpc.Server
	listener net.Listener
	prop     *proposer
	peers    *peerPool
	metrics  *nodeMetrics
	// sec is the loaded TLS and token setup (tls.go, auth.go).
	sec *security

	// leaderReady is the term in which this node, as leader, has applied
	// everything committed before it (a barrier). ReadIndex waits for it.
	leaderReady atomic.Uint64
	// termBarrier is that barrier's index and the applied index after it
	// (cluster.go, localReadIndex).
	termBarrier atomic.Pointer[barrierMark]
	// health is the grpc.health.v1 status (health.go).
	health nodeHealth
	// disk is the free space of the data directory (disk.go); voters, on
	// the leader, the voters' disks.
	disk   diskState
	voters votersDisk
	// backupsActive counts Backup streams being served (backup.go).
	backupsActive atomic.Int64
	// readStreams counts Read and Subscribe streams being served (read.go).
	readStreams atomic.Int64
	// tokenStreams counts them per bearer token name, tokenAppendStreams
	// the AppendStreams (read.go).
	tokenStreams, tokenAppendStreams tokenCounts
	// sendBytes is the node-wide budget of read messages in gRPC's hands
	// (sendbudget.go).
	sendBytes *byteBudget
	// reqBytes is the node-wide budget of append requests read and not
	// yet answered (reqbudget.go).
	reqBytes *requestBudget
	// tokenReq holds each bearer token's budget of append requests, made
	// on first use (reqbudget.go).
	tokenReqMu sync.Mutex
	tokenReq   map[string]*requestBudget
	quotas     *appendQuotas // append quotas per token (quota.go)
	// hbGuard keeps raft's heartbeat handler off the stores once
	// Close has shut it (snapGuard.SetHeartbeatHandler).
	hbGuard *heartbeatGuard
	// appendChain is the unary interceptor chain, which serveAppend runs
	// itself once it has read the request (reqbudget.go).
	appendChain grpc.UnaryServerInterceptor
	// conns are the API's client connections, for the stall cut
	// (stallcut.go).
	conns *connTracker
	// codec is the API's gRPC codec (codec.go).
	codec strictCodec
	// repairs is the queue of damaged sealed segments to repair from a
	// peer (repair.go).
	repairs repairQueue

	fatal     chan error
	fatalOnce sync.Once
	// draining closes first on Close: subscriptions end so that clients
	// resume elsewhere, while unary calls in flight still finish.
	draining  chan struct{}
	shutdown  chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
}

// New opens the node's storage, starts Raft and serves the API.
func New(cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	n := &Node{cfg: cfg, logger: cfg.Logger, started: time.Now(), fatal: make(chan error, 1), draining: make(chan struct{}), shutdown: make(chan struct{}),
		sendBytes: newByteBudget(cfg.NodeSendBytes), reqBytes: newRequestBudget(cfg.NodeRequestBytes), conns: newConnTracker(), codec: newStrictCodec()}
	if n.logger == nil {
		n.logger = slog.Default()
	}
	n.logger = slog.New(ratelog.NewHandler(n.logger.Handler(), logFlood))
	// The first line: which build this is.
	n.logger.Info("starting tsstore", "version", version.String(), "node", cfg.NodeID)
	n.repairs.init()
	sec, err := cfg.loadSecurity()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	n.sec = sec
	n.logger.Info("security", n.sec.logAttrs()...)
	n.logger = n.logger.With("node", cfg.NodeID)
	n.metrics = newNodeMetrics(n)
	n.quotas = newAppendQuotas(n.metrics.appendThrottled)
	n.hbGuard = new(heartbeatGuard)
	if err := n.checkIdentity(); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			n.closeStorage()
			n.metrics.closeListener()
		}
	}()
	if err := n.metrics.listen(cfg.MetricsAddr); err != nil {
		return nil, fmt.Errorf("metrics listen on %s: %w", cfg.MetricsAddr, err)
	}
	if err := n.openStorage(); err != nil {
		return nil, err
	}
	if err := n.checkNotRemoved(); err != nil {
		return nil, err
	}
	n.disk.free.Store(-1)
	n.checkDisk()
	n.opening("starting raft")
	if err := n.startRaft(); err != nil {
		return nil, err
	}
	n.opening("starting the API")
	if err := n.serve(); err != nil {
		return nil, err
	}
	n.prop = newProposer(n)
	n.goFunc(n.prop.run)
	n.goFunc(n.prop.respond)
	n.startMetrics()
	n.goFunc(n.watchLeadership)
	n.goFunc(n.registerSelf)
	n.goFunc(n.watchRemoval)
	n.goFunc(n.watchHeartbeats)
	n.goFunc(n.watchHealth)
	n.goFunc(n.boundRaftLog)
	n.goFunc(n.runRetention)
	n.goFunc(n.runTiering)
	n.goFunc(n.watchDisk)
	n.goFunc(n.watchVotersDisk)
	n.goFunc(n.snapshotRuns)
	n.goFunc(n.repairLoop)
	n.goFunc(n.cutStalledReaders)
	ok = true
	n.logger.Info("node started", "raft", cfg.RaftAddr, "api", n.APIAddr(), "data", cfg.DataDir,
		"open_time", time.Since(n.started).Round(time.Millisecond).String())
	return n, nil
}

// goFunc starts a goroutine owned by the node; Close waits for it.
func (n *Node) goFunc(f func()) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		f()
	}()
}

// opening reports a step of New: in the log, and to Config.OnOpen.
func (n *Node) opening(step string) {
	n.logger.Info("opening", "step", step, "since_start", time.Since(n.started).Round(time.Millisecond).String())
	if n.cfg.OnOpen != nil {
		n.cfg.OnOpen(step)
	}
}

func (n *Node) openStorage() error {
	var err error
	n.opening("opening the segment log")
	if err := n.openTierCache(); err != nil {
		return err
	}
	if n.cfg.Tier.Target == nil {
		// Segments evicted to a tier target cannot be read without it:
		// refuse to start rather than serve errors for their offsets.
		markers, _ := filepath.Glob(filepath.Join(n.cfg.DataDir, "fsm", "log", "*"+segment.TieredSuffix))
		if len(markers) > 0 {
			return fmt.Errorf("%w: %d segments were evicted to the tier target (%s names its object) and no tier target is configured (tier-dir or tier-s3-bucket)",
				ErrConfig, len(markers), markers[0])
		}
	}
	fcfg := fsm.DefaultConfig(filepath.Join(n.cfg.DataDir, "fsm"))
	fcfg.Segment = n.cfg.Segment
	// A damaged sealed segment does not keep the node from starting: it
	// serves the rest and repairs the segment from a peer (repair.go).
	fcfg.Segment.OpenDamaged = true
	fcfg.Logger = n.logger.With("component", "fsm")
	fcfg.OnFail = n.setFatal
	fcfg.OnHold = n.metrics.observeHold
	// The state may need a damaged sealed segment to roll forward: repair
	// it from a peer first (repair_open.go), then open again, until the
	// roll-forward finds no other damaged segment.
	for tried := map[uint64]bool{}; ; {
		if n.proc, err = fsm.Open(fcfg); err == nil {
			break
		}
		base, ok := segment.CorruptSegment(err)
		if !ok || tried[base] {
			return fmt.Errorf("opening fsm: %w", err)
		}
		tried[base] = true
		if err := n.repairBeforeOpen(fcfg, err); err != nil {
			return fmt.Errorf("opening fsm: %w", err)
		}
	}
	if n.snaps, err = fsm.NewSnapshotStore(filepath.Join(n.cfg.DataDir, "snapshots"), n.cfg.SnapshotRetain, n.logger); err != nil {
		return err
	}
	if n.cfg.Segment.Remote != nil {
		n.snaps.UseRemote(n.cfg.Segment.Remote)
	}
	n.opening("reading the raft log")
	n.stable, n.logs, err = openRaftStores(filepath.Join(n.cfg.DataDir, "raft"), n.cfg.LogCacheBytes, n.cfg.RaftLogFS, n.cfg.NodeID, n.logger)
	if err == nil {
		n.logs.onStore = n.metrics.observeRaftStore
	}
	if err != nil {
		return err
	}
	return n.checkSnapshotCovered()
}

// boltOptions open raft.db, which holds only the term and the vote since
// the log moved to raft-wal (a few writes per election). NoFreelistSync and
// the map free list still help when a pre-raft-wal raft.db, grown with the
// log, is opened once to be migrated (raftstores.go).
func boltOptions() *bbolt.Options {
	return &bbolt.Options{
		Timeout:        time.Second,
		NoFreelistSync: true,
		FreelistType:   bbolt.FreelistMapType,
	}
}

// checkSnapshotCovered refuses to start when the newest snapshot is ahead
// of the FSM's durable state. Raft starts applying after the snapshot
// index, so such a gap would silently drop entries.
func (n *Node) checkSnapshotCovered() error {
	metas, err := n.snaps.List()
	if err != nil || len(metas) == 0 {
		return err
	}
	latest := metas[0]
	if n.proc.AppliedIndex() >= latest.Index {
		return nil
	}
	_, rc, err := n.snaps.Open(latest.ID)
	if err != nil {
		return err
	}
	defer rc.Close()
	// Raft's snapshot index counts entries that never reach the FSM (a new
	// leader's no-op, barriers, configuration changes), so it may be above
	// the index in the FSM's own header while the state is the same.
	// Compare with the header: restoring rewrites the whole log.
	si, stream, err := fsm.ReadSnapshotInfo(rc)
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", latest.ID, err)
	}
	if n.proc.AppliedIndex() >= si.Index {
		return nil
	}
	n.logger.Warn("fsm is behind the newest snapshot; restoring from it",
		"applied", n.proc.AppliedIndex(), "snapshot", latest.ID, "snapshot_fsm_index", si.Index)
	if err := n.proc.Restore(stream); err != nil {
		return fmt.Errorf("fsm is behind snapshot %s and restoring it failed: %w", latest.ID, err)
	}
	return nil
}

func (n *Node) raftConfig() *raft.Config {
	c := raft.DefaultConfig()
	c.LocalID = raft.ServerID(n.cfg.NodeID)
	c.HeartbeatTimeout = n.cfg.HeartbeatTimeout
	c.ElectionTimeout = n.cfg.ElectionTimeout
	c.LeaderLeaseTimeout = n.cfg.LeaderLeaseTimeout
	c.CommitTimeout = n.cfg.CommitTimeout
	c.SnapshotThreshold = n.cfg.SnapshotThreshold
	c.SnapshotInterval = n.cfg.SnapshotInterval
	c.TrailingLogs = n.cfg.TrailingLogs
	// Also the FSM's apply batches and the leader's group commit. A round
	// of replication reads this many entries from the log before the
	// transport cuts the RPC to max-inflight-bytes (snapGuard). 64, raft's
	// default, was tried: b and c averaged 7-9% lower over 7 interleaved
	// runs, within their noise (docs/benchmarks.md); 256 stays as measured.
	c.MaxAppendEntries = 256
	// BatchApplyCh stays off: with a buffered apply channel, a future
	// enqueued just before shutdown is never answered (raft v1.7.2 does
	// not drain the buffer), so Close would wait forever on it. The
	// proposer already coalesces requests into large entries.
	c.BatchApplyCh = false
	// The FSM keeps its own durable state and is idempotent by index;
	// restoring the snapshot on every start would rewrite the whole log.
	c.NoSnapshotRestoreOnStart = true
	// Peer ids go in labels, not in metric names (server/metrics_collect.go).
	c.NoLegacyTelemetry = true
	c.Logger = raftLogger(n.logger, "raft", hclog.Info)
	return c
}

// logFlood limits each warning or error message to 10 lines per 10 s (the
// next line says how many were dropped): a client opening garbage
// connections, or a peer failing its handshakes, must not write a line
// per attempt.
var logFlood = ratelog.New(10*time.Second, 10)

func (n *Node) startRaft() error {
	addr, err := net.ResolveTCPAddr("tcp", n.cfg.RaftAddr)
	if err != nil {
		return fmt.Errorf("raft address: %w", err)
	}
	var provider raft.ServerAddressProvider
	if len(n.cfg.RaftDialOverrides) > 0 {
		// Every peer must be listed: the fallback logs a warning per dial.
		provider = dialOverrides(n.cfg.RaftDialOverrides)
	}
	tcfg := &raft.NetworkTransportConfig{
		ServerAddressProvider: provider,
		MaxPool:               8,
		// 1: no pipelined replication. hashicorp/raft v1.7.2's pipeline
		// can deadlock: when its decoder stops on a refused or stale-term
		// response, the sender may park one more request on the full
		// in-flight channel while the decoder parks on the done channel,
		// and the pipeline's Close is deferred behind the sender. The
		// follower then never gets another entry (heartbeats go on, so no
		// election heals it), and Raft's Shutdown waits for ever. Our
		// leadership-churn test hung in Close this way (CI, 2026-12-06);
		// grafana/pyroscope#5518 describes the same and disables it too.
		// Measured: docs/benchmarks.md, "Pipelined replication off".
		MaxRPCsInFlight: 1,
		Timeout:         10 * time.Second,
		Logger:          raftLogger(n.logger, "raft-net", hclog.Warn),
	}
	if n.sec.peerServer != nil {
		// Mutual TLS between nodes (tls.go); the override table still
		// picks the address dialled, TLS checks the name in the certificate.
		tcfg.Stream, err = newTLSStreamLayer(n.cfg.RaftAddr, addr, n.sec, n.logger.With("component", "raft-tls"))
		if err == nil {
			n.trans = raft.NewNetworkTransportWithConfig(tcfg)
		}
	} else {
		n.trans, err = raft.NewTCPTransportWithConfig(n.cfg.RaftAddr, addr, tcfg)
	}
	if err != nil {
		return fmt.Errorf("raft transport on %s: %w", n.cfg.RaftAddr, err)
	}
	rc := n.raftConfig()
	rc.TrailingLogs = n.trailingLogs()
	exists, err := raft.HasExistingState(n.logs, n.stable, n.snaps)
	if err != nil {
		return err
	}
	n.raft, err = raft.NewRaft(rc, timedFSM{FSM: &fsm.FSM{P: n.proc}, n: n}, n.logs, n.stable,
		snapStoreGuard{SnapshotStore: verifiedSnapshots{n.snaps, n}, n: n}, snapGuard{NetworkTransport: n.trans, n: n})
	if err != nil {
		return fmt.Errorf("starting raft: %w", err)
	}
	if !exists && len(n.cfg.Bootstrap) > 0 {
		var conf raft.Configuration
		for _, p := range n.cfg.Bootstrap {
			conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(p.ID), Address: raft.ServerAddress(p.RaftAddr)})
		}
		if err := n.raft.BootstrapCluster(conf).Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			return fmt.Errorf("bootstrap: %w", err)
		}
	}
	return nil
}

// dialOverrides resolves peers through an override table, falling back to
// the address in the Raft configuration.
type dialOverrides map[string]string

func (d dialOverrides) ServerAddr(id raft.ServerID) (raft.ServerAddress, error) {
	if a, ok := d[string(id)]; ok {
		return raft.ServerAddress(a), nil
	}
	return "", fmt.Errorf("no dial override for %s", id)
}

// setFatal records an unrecoverable error; the owner of the node (the
// serve command) shuts it down and exits non-zero.
func (n *Node) setFatal(err error) {
	n.fatalOnce.Do(func() {
		n.health.failed.Store(true)
		if errors.Is(err, ErrNodeRemoved) {
			n.logger.Error("node removed from the cluster; stopping", "error", err)
		} else {
			n.logger.Error("node failed; it must restart to recover from the raft log", "error", err)
		}
		n.fatal <- err
	})
}

// Fatal yields an error when the node can no longer apply entries.
func (n *Node) Fatal() <-chan error { return n.fatal }

// Raft exposes the Raft instance to tests and admin tools.
func (n *Node) Raft() *raft.Raft { return n.raft }

// Processor exposes the FSM processor to tests and admin tools.
func (n *Node) Processor() *fsm.Processor { return n.proc }

// APIAddr is the address the gRPC API listens on.
func (n *Node) APIAddr() string {
	if n.listener != nil {
		return n.listener.Addr().String()
	}
	return n.cfg.APIAddr
}

// Close stops the node: it reports NOT_SERVING, stops accepting requests,
// lets in-flight appends finish (up to a bound), then shuts Raft and
// storage down.
func (n *Node) Close() error {
	var err error
	n.closeOnce.Do(func() {
		n.health.shutdown()
		close(n.draining)
		stopped := make(chan struct{})
		go func() {
			n.grpc.GracefulStop()
			close(stopped)
		}()
		select {
		case <-stopped:
		case <-time.After(5 * time.Second):
			n.grpc.Stop()
		}
		n.stopMetrics()
		close(n.shutdown)
		if ferr := n.raft.Shutdown().Error(); ferr != nil {
			err = ferr
		}
		n.wg.Wait()
		n.peers.close()
		n.trans.Close()
		n.hbGuard.close() // no heartbeat writes the term to the stores closed next
		n.closeStorage()
		n.logger.Info("node stopped")
	})
	return err
}

func (n *Node) closeStorage() {
	if n.logs != nil {
		n.logs.Close()
	}
	if n.stable != nil {
		n.stable.Close()
	}
	if n.proc != nil {
		n.proc.Close()
	}
	if n.tierCache != nil {
		n.tierCache.Close()
	}
}
