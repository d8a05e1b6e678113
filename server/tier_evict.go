package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/tsstore/tsstore/fsm"
	"github.com/tsstore/tsstore/segment"
	"github.com/tsstore/tsstore/tiering"
)

// tierRemote is the segment log's view of the tier target: objects read
// in blocks through the node's cache. A missing object, or one shorter
// than the manifest says, is segment.ErrRemoteLost, which the log turns
// into a CorruptionError naming the key (DataLoss at the gRPC edge);
// a store that is down is an I/O error (Unavailable).
//
// It also fetches index bundles (segment.RemoteIndexer) straight from
// the target, past the cache: a bundle is read once, whole, at Open.
type tierRemote struct {
	c       *tiering.Cache
	target  tiering.Target
	timeout time.Duration // bounds one bundle fetch (the cache's GET timeout)
}

// IndexBundle implements segment.RemoteIndexer: a Head for the size of
// the bundle beside the object key, refused above segment.MaxIndexBundle
// before it is read, then one ranged GET, checked against the checksum
// the store keeps. A missing bundle (objects tiered before bundles were
// uploaded) is segment.ErrRemoteLost.
func (r tierRemote) IndexBundle(key string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
	defer cancel()
	return fetchIndexBundle(ctx, r.target, key)
}

// fetchIndexBundle reads the index bundle beside the object key whole
// (see tierRemote.IndexBundle); it does not decode it.
func fetchIndexBundle(ctx context.Context, target tiering.Target, key string) ([]byte, error) {
	bkey := indexBundleKey(key)
	info, err := target.Head(ctx, bkey)
	if errors.Is(err, tiering.ErrNotFound) {
		return nil, fmt.Errorf("%w: index bundle %s: %w", segment.ErrRemoteLost, bkey, err)
	}
	if err != nil {
		return nil, fmt.Errorf("index bundle %s: %w", bkey, err)
	}
	if info.Size <= 0 || info.Size > segment.MaxIndexBundle {
		return nil, fmt.Errorf("index bundle %s has %d bytes, more than %d or none", bkey, info.Size, segment.MaxIndexBundle)
	}
	rc, err := target.GetRange(ctx, bkey, 0, info.Size)
	if err != nil {
		return nil, fmt.Errorf("index bundle %s: %w", bkey, err)
	}
	defer rc.Close()
	b := make([]byte, info.Size)
	if _, err := io.ReadFull(rc, b); err != nil {
		return nil, fmt.Errorf("index bundle %s: read %d bytes: %w", bkey, info.Size, err)
	}
	if sum := tiering.Checksum(b); sum != info.Checksum {
		return nil, fmt.Errorf("index bundle %s: crc32c %08x, the store says %08x", bkey, sum, info.Checksum)
	}
	return b, nil
}

func (r tierRemote) Open(key string, size int64) (segment.RemoteObject, error) {
	return tierObject{c: r.c, key: key, size: size}, nil
}

type tierObject struct {
	c    *tiering.Cache
	key  string
	size int64
}

func (o tierObject) ReadAt(p []byte, off int64) (int, error) {
	// No caller context reaches a pread; the cache bounds each GET
	// (CacheConfig.GetTimeout) and shutdown cancels them.
	n, err := o.c.ReadAt(context.Background(), o.key, o.size, p, off)
	if errors.Is(err, tiering.ErrNotFound) || errors.Is(err, tiering.ErrShort) {
		err = fmt.Errorf("%w: %w", segment.ErrRemoteLost, err)
	}
	return n, err
}

// Prefetch implements segment.RemotePrefetcher.
func (o tierObject) Prefetch(off int64) { o.c.Prefetch(o.key, o.size, off) }

func (o tierObject) Close() error { return nil }

// openTierCache makes the node's cache of tiered objects and points the
// segment log at it (before the log opens: a log with tiered segments
// needs it to open). Nothing when tiering is off.
func (n *Node) openTierCache() error {
	tc := n.cfg.Tier
	if tc.Target == nil {
		return nil
	}
	cc := tc.cacheConfig()
	cc.OnGet = func(d time.Duration, bytes int64, err error) {
		if err == nil {
			n.metrics.tierGetSeconds.Observe(d.Seconds())
			n.metrics.tierFetchedBytes.Add(float64(bytes))
		} else {
			n.metrics.tierGetFailures.Inc()
		}
	}
	c, err := tiering.NewCache(tc.Target, cc)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	n.tierCache = c
	n.cfg.Segment.Remote = tierRemote{c: c, target: tc.Target, timeout: cc.GetTimeout}
	return nil
}

// evictTiered drops this node's local copy of every segment the
// manifest says is tiered (a committed fsm.CmdSegmentTiered), once its
// object checks out: a Head whose size and checksum are the manifest's.
// The log checks its local bytes against the same checksum before it
// removes them (segment.Log.Evict). A segment that is not committed as
// tiered is never evicted. It runs on every node, leader and followers.
// It stops at the first error (the store failing); an object that is
// missing or does not match is left (and logged), the local copy kept,
// and the other segments go on.
//
// Only segments below the fsm's durable checkpoint are evicted
// (fsm.Processor.CheckpointedOffset): a restart rebuilds the state by
// scanning the log from the checkpoint on, and must not need the store
// (down, or an object lost) to start. pending reports tiered segments
// held back for that: the caller takes a snapshot, which writes one.
func (n *Node) evictTiered(ctx context.Context) (pending bool, err error) {
	var local map[uint64]segment.SegmentInfo
	_ = n.proc.WithLog(func(l *segment.Log) error {
		segs := l.Segments()
		local = make(map[uint64]segment.SegmentInfo, len(segs))
		for _, s := range segs {
			local[s.BaseOffset] = s
		}
		return nil
	})
	checkpointed := n.proc.CheckpointedOffset()
	for _, e := range n.proc.Retention().Segments {
		s, ok := local[e.BaseOffset]
		if e.State != fsm.SegmentTiered || e.Key == "" || !ok || !s.Sealed || s.Tiered {
			continue
		}
		if e.NextOffset > checkpointed {
			pending = true
			continue
		}
		if s.Size != e.Size || s.NextOffset != e.NextOffset {
			n.logger.Error("tiering: the local segment is not the manifest's; keeping it", "base_offset", e.BaseOffset,
				"local_next_offset", s.NextOffset, "local_bytes", s.Size, "next_offset", e.NextOffset, "bytes", e.Size)
			continue
		}
		obj, err := n.cfg.Tier.Target.Head(ctx, e.Key)
		if errors.Is(err, tiering.ErrNotFound) {
			// The object is lost: this local copy may be the last one.
			// Keep it, and go on with the other segments (a store that
			// answers is not down).
			n.metrics.tierEvictRefused.Inc()
			n.logger.Error("tiering: the object of a committed segment is missing; keeping the local copy",
				"base_offset", e.BaseOffset, "key", e.Key)
			continue
		}
		if err != nil {
			return pending, fmt.Errorf("tiering: evict segment %d: head %s: %w", e.BaseOffset, e.Key, err)
		}
		if obj.Size != e.Size || obj.Checksum != e.Digest {
			n.metrics.tierEvictRefused.Inc()
			n.logger.Error("tiering: the object does not match the committed segment; keeping the local copy",
				"base_offset", e.BaseOffset, "key", e.Key, "object_bytes", obj.Size, "object_crc32c", obj.Checksum,
				"bytes", e.Size, "crc32c", e.Digest)
			continue
		}
		err = n.proc.WithLog(func(l *segment.Log) error {
			return l.Evict(e.BaseOffset, segment.RemoteRef{Key: e.Key, Size: e.Size, Checksum: e.Digest})
		})
		switch {
		case errors.Is(err, segment.ErrNotSealed):
			continue // retention dropped it meanwhile
		case errors.Is(err, segment.ErrRemoteMismatch):
			n.metrics.tierEvictRefused.Inc()
			n.logger.Error("tiering: the local segment does not match the committed checksum; keeping it", "base_offset", e.BaseOffset, "error", err)
			continue
		case err != nil:
			return pending, fmt.Errorf("tiering: evict segment %d: %w", e.BaseOffset, err)
		}
		n.metrics.tierEvictedSegments.Inc()
		n.metrics.tierEvictedBytes.Add(float64(e.Size))
		n.logger.Info("tiering: local copy evicted; the segment is read from the tier target", "base_offset", e.BaseOffset,
			"next_offset", e.NextOffset, "bytes", e.Size, "key", e.Key)
	}
	return pending, nil
}
