package server

import (
	"strconv"
	"sync"
	"time"

	gometrics "github.com/hashicorp/go-metrics/compat"
	gmprom "github.com/hashicorp/go-metrics/compat/prometheus"
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tsstore/tsstore/fsm"
	"github.com/tsstore/tsstore/segment"
)

// stateCollector reads Raft, FSM and segment state at scrape time, so that
// nothing on the write path updates gauges for it.
type stateCollector struct{ n *Node }

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

var (
	descRaftState         = desc("tsstore_raft_state", "1 for this node's current Raft role (leader, follower, candidate, shutdown), 0 for the others.", "state")
	descRaftTerm          = desc("tsstore_raft_term", "Current Raft term.")
	descRaftCommitIndex   = desc("tsstore_raft_commit_index", "Highest Raft index this node knows to be committed.")
	descRaftAppliedIndex  = desc("tsstore_raft_applied_index", "Highest Raft index Raft has handed to the FSM.")
	descRaftLastLogIndex  = desc("tsstore_raft_last_log_index", "Last index in this node's Raft log.")
	descRaftSnapshotIndex = desc("tsstore_raft_last_snapshot_index", "Raft index of the newest snapshot.")
	descRaftFSMPending    = desc("tsstore_raft_fsm_pending_entries", "Committed Raft entries queued for the FSM.")
	descRaftApplyLag      = desc("tsstore_raft_apply_lag_entries", "Commit index minus the FSM's applied index on this node: entries committed but not yet readable here.")
	descRaftLastContact   = desc("tsstore_raft_last_contact_seconds", "Seconds since this follower last heard from the leader (absent on the leader and before first contact).")
	descFSMApplied        = desc("tsstore_fsm_applied_index", "Last Raft index the FSM applied (reads wait on this).")
	descFSMNextOffset     = desc("tsstore_fsm_next_offset", "Offset the next appended event will get (events in the log).")
	descFSMLastTimestamp  = desc("tsstore_fsm_last_timestamp_seconds", "Timestamp of the last batch in the log, unix seconds (0 when empty).")
	descLogFirstOffset    = desc("tsstore_log_first_offset", "First offset readers may ask for: the last retention cut, or the first offset stored in the segment log.")
	descSegments          = desc("tsstore_segments", "Segment files in the log, the active one included.")
	descSegmentBytes      = desc("tsstore_segments_bytes", "Bytes of complete batches in the segment .log files on this node's disk (index files and segments evicted to the tier target excluded).")
	descTieredSegments    = desc("tsstore_tier_local_evicted_segments", "Sealed segments whose .log this node evicted: their bytes are read from the tier target.")
	descTieredBytes       = desc("tsstore_tier_local_evicted_bytes", "Bytes of the segments in tsstore_tier_local_evicted_segments.")
	descRaftLogBytes      = desc("tsstore_raft_log_bytes", "Bytes of the entries in this node's Raft log (raft-wal), as the byte bounds count them (docs/design.md).")
	descRaftLogEntries    = desc("tsstore_raft_log_entries", "Entries in this node's Raft log.")
	descRaftLogCacheBytes = desc("tsstore_raft_log_cache_bytes", "Bytes of recent Raft entries held in memory for replication (bounded by log-cache-bytes).")
	descDiskFree          = desc("tsstore_disk_free_bytes", "Free bytes on the data directory's filesystem (available to the node), read every second.")
	descDiskLow           = desc("tsstore_disk_low", "1 while free space is below min-free-bytes (appends refused, NOT_SERVING), else 0.")
	descQueued            = desc("tsstore_group_commit_queued_requests", "Append requests waiting for the proposer to put them into an entry.")
)

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRaftState, descRaftTerm, descRaftCommitIndex, descRaftAppliedIndex,
		descRaftLastLogIndex, descRaftSnapshotIndex, descRaftFSMPending, descRaftApplyLag, descRaftLastContact,
		descFSMApplied, descFSMNextOffset, descFSMLastTimestamp, descLogFirstOffset, descSegments, descSegmentBytes, descTieredSegments, descTieredBytes, descQueued,
		descRaftLogBytes, descRaftLogEntries, descRaftLogCacheBytes, descDiskFree, descDiskLow} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	n := c.n
	if n.proc == nil {
		return // storage not open yet
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	if n.raft != nil {
		state := n.raft.State()
		for _, s := range []raft.RaftState{raft.Leader, raft.Follower, raft.Candidate, raft.Shutdown} {
			v := 0.0
			if s == state {
				v = 1
			}
			gauge(descRaftState, v, roleName(s))
		}
		st := n.raft.Stats()
		stat := func(k string) float64 {
			v, _ := strconv.ParseUint(st[k], 10, 64)
			return float64(v)
		}
		commit := n.raft.CommitIndex()
		gauge(descRaftTerm, stat("term"))
		gauge(descRaftCommitIndex, float64(commit))
		gauge(descRaftAppliedIndex, stat("applied_index"))
		gauge(descRaftLastLogIndex, stat("last_log_index"))
		gauge(descRaftSnapshotIndex, stat("last_snapshot_index"))
		gauge(descRaftFSMPending, stat("fsm_pending"))
		if applied := n.proc.AppliedIndex(); commit > applied {
			gauge(descRaftApplyLag, float64(commit-applied))
		} else {
			gauge(descRaftApplyLag, 0)
		}
		if last := n.raft.LastContact(); state != raft.Leader && !last.IsZero() {
			gauge(descRaftLastContact, time.Since(last).Seconds())
		}
	}
	gauge(descFSMApplied, float64(n.proc.AppliedIndex()))
	gauge(descFSMNextOffset, float64(n.proc.NextOffset()))
	gauge(descFSMLastTimestamp, float64(n.proc.LastTimestamp())/1e9)
	_ = n.proc.WithLog(func(l *segment.Log) error {
		segs := l.Segments()
		var size, tieredBytes int64
		var tiered int
		for _, s := range segs {
			if s.Tiered {
				tiered++
				tieredBytes += s.Size
				continue
			}
			size += s.Size
		}
		gauge(descLogFirstOffset, float64(l.FirstOffset()))
		gauge(descSegments, float64(len(segs)))
		gauge(descSegmentBytes, float64(size))
		gauge(descTieredSegments, float64(tiered))
		gauge(descTieredBytes, float64(tieredBytes))
		return nil
	})
	if n.logs != nil {
		u := n.logs.usage()
		gauge(descRaftLogBytes, float64(u.Bytes))
		gauge(descRaftLogEntries, float64(u.Entries))
		gauge(descRaftLogCacheBytes, float64(u.CacheBytes))
	}
	if free := n.disk.free.Load(); free >= 0 {
		gauge(descDiskFree, float64(free))
		low := 0.0
		if n.disk.low.Load() {
			low = 1
		}
		gauge(descDiskLow, low)
	}
	if n.prop != nil {
		gauge(descQueued, float64(len(n.prop.in)))
	}
}

// countLeaderChanges counts leader observations that name a leader other
// than the previous observation (raft reports "no leader" as an empty id,
// so a re-election of the same node after a gap counts too).
func (n *Node) countLeaderChanges() {
	ch := make(chan raft.Observation, 16)
	obs := raft.NewObserver(ch, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	n.raft.RegisterObserver(obs)
	defer n.raft.DeregisterObserver(obs)
	// The leader known before the observer was registered counts once.
	var last raft.ServerID
	if _, id := n.raft.LeaderWithID(); id != "" {
		last = id
		n.metrics.leaderChanges.Inc()
	}
	for {
		select {
		case o := <-ch:
			id := o.Data.(raft.LeaderObservation).LeaderID
			if id != "" && id != last {
				n.metrics.leaderChanges.Inc()
			}
			last = id
		case <-n.shutdown:
			return
		}
	}
}

// timedFSM times the FSM snapshot's Persist (header, hard links and the
// sink's Close with its fsyncs) without touching package fsm, and
// schedules the repair of a segment that made a snapshot fail.
type timedFSM struct {
	*fsm.FSM
	n *Node
}

func (f timedFSM) Snapshot() (raft.FSMSnapshot, error) {
	s, err := f.FSM.Snapshot()
	if err != nil {
		// A snapshot refused for a damaged segment (fsm.ErrSegmentDamaged)
		// names it: repair it, and a later snapshot goes through.
		return nil, f.n.noteCorruption(err)
	}
	return timedSnapshot{FSMSnapshot: s, m: f.n.metrics}, nil
}

type timedSnapshot struct {
	raft.FSMSnapshot
	m *nodeMetrics
}

func (s timedSnapshot) Persist(sink raft.SnapshotSink) error {
	start := time.Now()
	err := s.FSMSnapshot.Persist(sink)
	if err != nil {
		s.m.persistErrors.Inc()
	} else {
		s.m.persistDuration.Observe(time.Since(start).Seconds())
	}
	return err
}

// raftMetrics bridges hashicorp/raft's own metrics. raft v1.7.2 (and
// raft-boltdb/v2) emit through github.com/hashicorp/go-metrics/compat,
// which forwards to armon/go-metrics unless built with the
// hashicorpmetrics tag; going through compat here too picks the same
// package either way. Its sink is process-wide: the first node that serves
// metrics installs one Prometheus sink as the global go-metrics sink, and
// every node that serves metrics registers that same sink in its own
// registry. With one node per process (tsstore serve) the series are that
// node's; with several nodes in one process (tests) they are the sum (or,
// for gauges, the last value) over all of them, under each node's label.
var raftMetrics struct {
	once sync.Once
	sink *gmprom.PrometheusSink
	err  error
}

func raftMetricsSink() (*gmprom.PrometheusSink, error) {
	raftMetrics.once.Do(func() {
		sink, err := gmprom.NewPrometheusSinkFrom(gmprom.PrometheusOpts{
			Name:       "tsstore_raft_metrics_bridge",
			Expiration: time.Minute,
			// The sink registers itself; keep it out of the global
			// registry. Nodes register it in theirs.
			Registerer: prometheus.NewRegistry(),
		})
		if err != nil {
			raftMetrics.err = err
			return
		}
		cfg := gometrics.DefaultConfig("tsstore") // keys become tsstore_raft_...
		cfg.EnableHostname = false                // no hostname in gauge names
		cfg.EnableRuntimeMetrics = false          // the Go collector has them; no goroutine
		if _, err := gometrics.NewGlobal(cfg, sink); err != nil {
			raftMetrics.err = err
			return
		}
		raftMetrics.sink = sink
	})
	return raftMetrics.sink, raftMetrics.err
}
