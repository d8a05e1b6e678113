package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/raft"

	"github.com/tsstore/tsstore/fsm"
	"github.com/tsstore/tsstore/segment"
	"github.com/tsstore/tsstore/tiering"
)

// TierConfig is cold tiering (issue #13): the leader uploads sealed
// segments that pass the policy to Target and commits a "segment tiered"
// decision through Raft (fsm.CmdSegmentTiered), so every replica's
// manifest says where each segment's copy is. Every node then drops its
// local .log of each committed segment once the object checks out
// (tier_evict.go) and reads it back through a block cache. Off, exactly
// as before, when Target is nil.
type TierConfig struct {
	// Target is the object store; nil turns tiering off.
	Target tiering.Target
	// After uploads the sealed segments whose last batch is at least this
	// old. 0: no age rule.
	After time.Duration
	// HotBytes uploads the oldest sealed segments not yet tiered while
	// those add up to more than this many bytes. 0: no budget rule.
	HotBytes int64
	// Interval is how often the leader looks for segments to upload.
	Interval time.Duration
	// MaxBackoff bounds the wait after failed attempts: it starts at
	// Interval and doubles per failure up to MaxBackoff.
	MaxBackoff time.Duration
	// SweepInterval is how often the leader deletes the objects that
	// earlier leaders uploaded and never committed (sweep).
	SweepInterval time.Duration
	// DeleteDelay is how long the leader waits, after it sees a tiered
	// segment dropped by retention, before it deletes the object: reads
	// in flight on any node (and followers that have not applied the
	// drop) keep reading it meanwhile, as readers of a dropped local
	// segment keep its file. An object a stored snapshot of the leader
	// still references is kept until that snapshot is reaped. 0: at the
	// next tick.
	DeleteDelay time.Duration
	// Cache is how tiered segments are read back: block size, the cap in
	// bytes of the in-memory cache, the timeout of one GET. Zero: the
	// defaults (tiering.DefaultCacheConfig).
	Cache tiering.CacheConfig
}

func (c TierConfig) validate() error {
	switch {
	case c.After < 0 || c.HotBytes < 0 || c.DeleteDelay < 0:
		return errors.New("tier after, tier hot bytes and tier delete delay must not be negative")
	case c.Target == nil && (c.After > 0 || c.HotBytes > 0):
		return errors.New("tier after and tier hot bytes need a tier target (tier-dir or tier-s3-bucket)")
	case c.Target != nil && c.After == 0 && c.HotBytes == 0:
		return errors.New("a tier target needs a policy: tier-after or tier-hot-bytes")
	case c.Target != nil && (c.Interval <= 0 || c.MaxBackoff < c.Interval || c.SweepInterval <= 0):
		return errors.New("tier interval and tier sweep interval must be positive and tier max backoff at least the interval")
	case c.Target != nil:
		return c.cacheConfig().Validate()
	}
	return nil
}

// cacheConfig is Cache, or the defaults when Cache was left zero.
func (c TierConfig) cacheConfig() tiering.CacheConfig {
	cc := c.Cache
	if cc.BlockBytes == 0 && cc.CapBytes == 0 && cc.GetTimeout == 0 {
		cc = tiering.DefaultCacheConfig()
	}
	return cc
}

// tierCandidates returns, oldest first, the local (not yet tiered)
// entries of the manifest that the policy sends to the store at now.
func tierCandidates(entries []fsm.ManifestEntry, now time.Time, after time.Duration, hotBytes int64) []fsm.ManifestEntry {
	var untiered int64
	for _, e := range entries {
		if e.State == fsm.SegmentLocal {
			untiered += e.Size
		}
	}
	var out []fsm.ManifestEntry
	for _, e := range entries {
		if e.State != fsm.SegmentLocal {
			continue
		}
		byAge := after > 0 && now.UnixNano()-e.LastTimestamp >= after.Nanoseconds()
		byBudget := hotBytes > 0 && untiered > hotBytes
		if byAge || byBudget {
			out = append(out, e)
			untiered -= e.Size
		}
	}
	return out
}

// runTiering uploads and commits what the policy sends to the store,
// every Interval while this node leads, and keeps the backlog metrics
// on every node. A failed attempt waits Interval, doubling per failure
// up to MaxBackoff; the segments stay local meanwhile.
func (n *Node) runTiering() {
	tc := n.cfg.Tier
	if tc.Target == nil {
		return
	}
	// ctx ends an upload in flight at shutdown.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n.goFunc(func() {
		select {
		case <-n.shutdown:
			cancel()
		case <-ctx.Done():
		}
	})
	t := time.NewTicker(tc.Interval)
	defer t.Stop()
	var retryAt, sweptAt, checkpointAt time.Time
	var backoff time.Duration
	var sweptTerm uint64
	deleted := map[string]bool{}       // objects of dropped segments deleted while leading
	dropSeen := map[string]time.Time{} // when this leader first saw each dropped segment's key
	for {
		select {
		case <-n.shutdown:
			return
		case <-t.C:
		}
		now := time.Now()
		n.tierBacklog(now)
		pending, err := n.evictTiered(ctx)
		if err != nil && ctx.Err() == nil {
			n.logger.Warn("tiering: evicting local copies failed; they stay and this node tries again", "error", err)
		}
		if pending && now.Sub(checkpointAt) >= max(tc.Interval, time.Second) {
			// Tiered segments above the durable checkpoint wait for one:
			// a snapshot writes it (at most once a second).
			checkpointAt = now
			if err := n.await(nil, n.raft.Snapshot()); err != nil && !errors.Is(err, raft.ErrNothingNewToSnapshot) && ctx.Err() == nil {
				n.logger.Warn("tiering: snapshot for evicting tiered segments failed; they stay local until the next one", "error", err)
			}
		}
		if n.raft.State() != raft.Leader {
			clear(deleted)
			clear(dropSeen)
			continue
		}
		if now.Before(retryAt) {
			continue
		}
		err = n.tierOnce(ctx, now, deleted, dropSeen)
		// The sweep waits for the term's barrier (watchLeadership).
		if term := n.raft.CurrentTerm(); err == nil && n.leaderReady.Load() == term && (term != sweptTerm || now.Sub(sweptAt) >= tc.SweepInterval) {
			if err = n.sweepTier(ctx, term); err == nil {
				sweptTerm, sweptAt = term, now
			}
		}
		switch {
		case ctx.Err() != nil:
			return // shutting down: the upload in flight was cut off
		case err == nil || errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost):
			backoff, retryAt = 0, time.Time{}
		default:
			backoff = min(max(2*backoff, tc.Interval), tc.MaxBackoff)
			retryAt = time.Now().Add(backoff)
			n.metrics.tierFailures.Inc()
			n.logger.Warn("tiering: attempt failed; the segments stay local and the leader tries again", "retry_in", backoff, "error", err)
		}
	}
}

// tierBacklog sets the backlog gauges from this node's manifest.
func (n *Node) tierBacklog(now time.Time) {
	segs, bytes := n.tierBacklogNow(now)
	n.metrics.tierBacklogSegments.Set(float64(segs))
	n.metrics.tierBacklogBytes.Set(float64(bytes))
}

// tierBacklogNow counts the segments (and their bytes) the policy sends
// to the store at now that are not tiered yet, per this node's manifest.
func (n *Node) tierBacklogNow(now time.Time) (segs int, bytes int64) {
	c := tierCandidates(n.proc.Retention().Segments, now, n.cfg.Tier.After, n.cfg.Tier.HotBytes)
	for _, e := range c {
		bytes += e.Size
	}
	return len(c), bytes
}

// tierOnce uploads and commits the candidates, oldest first, then
// deletes the objects of tiered segments that retention dropped at least
// DeleteDelay ago (as this leader saw it) and that no stored snapshot of
// this node references, and their index bundles. It stops at the first
// error.
func (n *Node) tierOnce(ctx context.Context, now time.Time, deleted map[string]bool, dropSeen map[string]time.Time) error {
	r := n.proc.Retention()
	for _, e := range tierCandidates(r.Segments, now, n.cfg.Tier.After, n.cfg.Tier.HotBytes) {
		if err := n.tierSegment(ctx, e); err != nil {
			return err
		}
	}
	var inSnapshots map[string]bool
	for _, e := range r.Segments {
		if e.State != fsm.SegmentDropped || e.Key == "" || deleted[e.Key] {
			continue
		}
		seen, ok := dropSeen[e.Key]
		if !ok {
			dropSeen[e.Key], seen = now, now
		}
		if now.Sub(seen) < n.cfg.Tier.DeleteDelay {
			continue
		}
		if inSnapshots == nil {
			var err error
			if inSnapshots, err = n.snaps.TieredKeys(); err != nil {
				return fmt.Errorf("tiering: snapshots' objects: %w", err)
			}
		}
		if inSnapshots[e.Key] {
			continue // a snapshot may still send it; it goes once that one is reaped
		}
		if err := n.cfg.Tier.Target.Delete(ctx, e.Key); err != nil {
			return err
		}
		if err := n.cfg.Tier.Target.Delete(ctx, indexBundleKey(e.Key)); err != nil {
			return err
		}
		deleted[e.Key] = true
		n.logger.Info("tiering: deleted the object of a segment retention dropped", "key", e.Key, "base_offset", e.BaseOffset)
	}
	return nil
}

// tierKey is the object key of one upload attempt of the segment [base,
// next): unique per attempt, by the term and a random nonce.
func tierKey(cluster string, base, next, term uint64, nonce string) string {
	return fmt.Sprintf("%s/segments/%020d-%020d-t%d-%s.log", cluster, base, next, term, nonce)
}

// tierKeyTerm returns the term of a key tierKey made for cluster.
func tierKeyTerm(cluster, key string) (uint64, bool) {
	var base, next, term uint64
	var nonce string
	rest, ok := strings.CutPrefix(key, cluster+"/segments/")
	if !ok || !strings.HasSuffix(rest, ".log") {
		return 0, false
	}
	rest = strings.TrimSuffix(rest, ".log")
	if _, err := fmt.Sscanf(strings.ReplaceAll(rest, "-", " "), "%d %d t%d %s", &base, &next, &term, &nonce); err != nil {
		return 0, false
	}
	if tierKey(cluster, base, next, term, nonce) != key {
		return 0, false
	}
	return term, true
}

// sweepTier deletes the objects earlier leaders uploaded and never
// committed (Kafka's KAFKA-16511 leak): keys of this cluster's form, of
// a term before term, that no manifest entry names, and index bundles
// (".idx") whose object key (".log") no manifest entry names. Such an
// upload can no longer be committed once this leader has applied
// everything before its own entries (its term's barrier,
// watchLeadership): a proposal of an earlier term is in this leader's
// log, and so applied, or never commits. Objects of this term are left alone (a commit of this leader
// may still be pending), and so is every key not of tierKey's form.
//
// It takes no barrier of its own: the term's barrier is the last entry
// that never reaches the FSM (localReadIndex counts on it), and a second
// one left followers' linearizable reads of an idle cluster waiting for
// an index their FSM never applies.
func (n *Node) sweepTier(ctx context.Context, term uint64) error {
	if n.leaderReady.Load() != term || n.raft.CurrentTerm() != term {
		return fmt.Errorf("tiering: sweep: %w: the term's barrier is not applied yet", errNoLeader)
	}
	named := map[string]bool{}
	for _, e := range n.proc.Retention().Segments {
		if e.Key != "" {
			named[e.Key] = true
		}
	}
	var leaked []string
	err := n.cfg.Tier.Target.List(ctx, n.cfg.ClusterName+"/segments/", func(o tiering.ObjectInfo) error {
		logKey := o.Key
		if k, ok := strings.CutSuffix(o.Key, segment.IndexBundleSuffix); ok {
			logKey = k + segment.LogSuffix // an index bundle goes with its object
		}
		if t, ok := tierKeyTerm(n.cfg.ClusterName, logKey); ok && t < term && !named[logKey] {
			leaked = append(leaked, o.Key)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("tiering: sweep: %w", err)
	}
	for _, key := range leaked {
		if err := n.cfg.Tier.Target.Delete(ctx, key); err != nil {
			return fmt.Errorf("tiering: sweep: %w", err)
		}
		n.metrics.tierSwept.Inc()
		n.logger.Info("tiering: deleted an object no committed segment names (an earlier leader's upload)", "key", key)
	}
	return nil
}

// indexBundleKey is the key of the index bundle uploaded beside the
// object key (segment.IndexBundle): the same key, ".idx" for ".log".
func indexBundleKey(key string) string {
	return strings.TrimSuffix(key, segment.LogSuffix) + segment.IndexBundleSuffix
}

// putIndexBundle uploads the index bundle of the segment e under the
// bundle key of its object key, before the object itself: a committed
// object then always has its bundle, unless one was never made (index
// files too large for a bundle, or this node's failing their check
// against its .log: logged, and nodes that lose theirs rebuild them
// from the object).
func (n *Node) putIndexBundle(ctx context.Context, e fsm.ManifestEntry, key string) error {
	var b []byte
	err := n.proc.WithLog(func(l *segment.Log) error {
		var err error
		b, err = l.IndexBundle(e.BaseOffset)
		return err
	})
	var ce *segment.CorruptionError
	switch {
	case errors.Is(err, segment.ErrIndexBundleTooLarge):
		n.logger.Warn("tiering: no index bundle for the segment; a node that loses its index files rebuilds them from the object",
			"base_offset", e.BaseOffset, "error", err)
		return nil
	case errors.As(err, &ce) && !ce.LogDamaged():
		// This node's index files do not describe its .log: never spread
		// them. The object goes up alone (nodes that lose their files
		// rebuild them from it); the error names the file to delete here
		// (a restart then rebuilds it).
		n.logger.Error("tiering: the segment's index files fail their check against its .log; uploading it without an index bundle",
			"base_offset", e.BaseOffset, "error", err)
		return nil
	}
	if err != nil {
		return fmt.Errorf("tiering: index bundle of segment %d: %w", e.BaseOffset, err)
	}
	bkey := indexBundleKey(key)
	if _, err := n.cfg.Tier.Target.Put(ctx, bkey, bytes.NewReader(b), int64(len(b)), tiering.Checksum(b)); err != nil {
		return fmt.Errorf("tiering: upload index bundle %s: %w", bkey, err)
	}
	n.metrics.tierUploadedBytes.Add(float64(len(b)))
	return nil
}

// tierSegment uploads one sealed segment's index bundle, then its .log,
// under keys of their own (cluster, range, term, random nonce: unique
// per attempt; the bundle's is the .log's with ".idx"), and commits it.
// The commit names the .log's key only; the bundle's follows from it. Put checks the bytes it sends against the manifest's digest, so a
// local copy that rotted is never uploaded. An object whose commit fails
// is left for a sweep: the entry may still commit (leadership lost after
// the proposal), and then its object must exist.
func (n *Node) tierSegment(ctx context.Context, e fsm.ManifestEntry) error {
	var rd *segment.SealedReader
	err := n.proc.WithLog(func(l *segment.Log) error {
		var err error
		rd, err = l.OpenSealed(e.BaseOffset)
		return err
	})
	if err != nil {
		return fmt.Errorf("tiering: open segment %d: %w", e.BaseOffset, err)
	}
	defer rd.Close()
	if got := rd.Info(); got.Size != e.Size || got.NextOffset != e.NextOffset {
		return fmt.Errorf("tiering: segment %d is [%d, %d) of %d bytes here, [%d, %d) of %d in the manifest",
			e.BaseOffset, got.BaseOffset, got.NextOffset, got.Size, e.BaseOffset, e.NextOffset, e.Size)
	}
	var nonce [8]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return err
	}
	key := tierKey(n.cfg.ClusterName, e.BaseOffset, e.NextOffset, n.raft.CurrentTerm(), hex.EncodeToString(nonce[:]))
	if err := n.putIndexBundle(ctx, e, key); err != nil {
		return err
	}
	start := time.Now()
	if _, err := n.cfg.Tier.Target.Put(ctx, key, rd, e.Size, e.Digest); err != nil {
		return err
	}
	n.metrics.tierPutSeconds.Observe(time.Since(start).Seconds())
	n.metrics.tierUploadedBytes.Add(float64(e.Size))
	cctx, cancel := context.WithTimeout(ctx, n.cfg.CommandTimeout)
	defer cancel()
	_, err = n.applyCommand(cctx, fsm.CmdSegmentTiered, &fsm.SegmentTieredCommand{BaseOffset: e.BaseOffset,
		NextOffset: e.NextOffset, Size: e.Size, Checksum: e.Digest, Key: key})
	if err != nil {
		return fmt.Errorf("tiering: commit segment %d as %s: %w", e.BaseOffset, key, err)
	}
	n.metrics.tierSegments.Inc()
	n.logger.Info("tiering: segment tiered", "base_offset", e.BaseOffset, "next_offset", e.NextOffset, "bytes", e.Size, "key", key, "target", n.cfg.Tier.Target.String())
	return nil
}
