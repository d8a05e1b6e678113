package server

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"time"

	"github.com/hashicorp/raft-wal/types"

	"github.com/tsstore/tsstore/record"
	"github.com/tsstore/tsstore/segment"
	"github.com/tsstore/tsstore/tiering"
)

// Peer is one member of the initial cluster.
type Peer struct {
	ID       string
	RaftAddr string
}

// Config configures one tsstore node. Build it with DefaultConfig and
// override fields; Validate reports the first problem.
type Config struct {
	// NodeID is this node's stable Raft server id.
	NodeID string
	// ClusterName is written to the data directory on first start; a data
	// directory of another cluster is refused.
	ClusterName string
	// DataDir holds raft/, snapshots/, fsm/ and node.json.
	DataDir string
	// RaftAddr is the host:port the Raft transport listens on and
	// advertises to peers.
	RaftAddr string
	// APIAddr is the host:port of the gRPC API; APIAdvertise, if set, is
	// the address other nodes and clients are told to use.
	APIAddr      string
	APIAdvertise string
	// Bootstrap lists the initial voters (this node among them). A node
	// with existing Raft state ignores it. Empty: wait to be added.
	Bootstrap []Peer
	// RaftDialOverrides maps a peer's server id to the address this node
	// dials for it, instead of the address in the Raft configuration. The
	// fault-injection harness routes each link through its own proxy this
	// way; production leaves it empty.
	RaftDialOverrides map[string]string

	// Raft timing. See docs/design.md for how they bound failover.
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	CommitTimeout      time.Duration

	// SnapshotThreshold is the number of Raft entries after which a
	// snapshot is taken; SnapshotInterval how often that is checked.
	SnapshotThreshold uint64
	SnapshotInterval  time.Duration
	// TrailingLogs is how many Raft entries are kept after a snapshot, so
	// slightly lagging followers catch up without InstallSnapshot.
	TrailingLogs uint64
	// SnapshotRetain is how many snapshots are kept on disk.
	SnapshotRetain int
	// SnapshotThresholdBytes takes a snapshot once the Raft log holds this
	// many bytes more than TrailingBytes, in bytes (logbound.go): entries
	// can be megabytes, so a count alone does not bound the log.
	SnapshotThresholdBytes int64
	// TrailingBytes bounds, in bytes, the entries kept after a snapshot
	// (TrailingLogs bounds their count; the smaller wins).
	TrailingBytes int64
	// LogCacheBytes bounds, in bytes, the cache of recent Raft entries that
	// the leader replicates from (logstore.go).
	LogCacheBytes int64

	// MaxEventBytes bounds one event's payload plus metadata, in bytes.
	MaxEventBytes int
	// MaxRequestBytes bounds one Append request, in bytes.
	MaxRequestBytes int
	// MaxEntryBytes bounds the requests coalesced into one Raft entry
	// (group commit), in bytes; a larger single request goes alone.
	MaxEntryBytes int
	// MaxEntryRequests bounds the requests coalesced into one Raft entry.
	MaxEntryRequests int
	// MaxInflightEntries bounds Raft entries proposed but not yet applied.
	MaxInflightEntries int
	// MaxInflightBytes bounds, in bytes, the encoded Raft entries proposed
	// and not yet answered (one entry larger than it goes alone): what
	// raft's pipeline, its log writer's buffer and the followers' append
	// RPCs hold for appends the node has accepted. Count alone let 64
	// entries of one 15 MB request each hold about a GiB. It also bounds
	// the entries of one Raft append RPC to a catching-up follower
	// (snapGuard.AppendEntries).
	MaxInflightBytes int64
	// MaxStreamInflight bounds the requests of one AppendStream call that
	// the server has read and not yet answered (count). At the bound it
	// stops reading the call, so HTTP/2 flow control holds the client back.
	MaxStreamInflight int
	// ReadMessageBytes is the default size of one Read response message.
	ReadMessageBytes int
	// ProducerTTL forgets a producer's dedup state once it has not
	// appended for this long (Kafka expires producer ids after 7 days);
	// it comes back only with a new sequence starting at 1. 0: never. The
	// leader puts it in every entry, so replicas decide alike.
	ProducerTTL time.Duration
	// Compression is how the leader has every replica store the batches of
	// the entries it proposes: "none" or "zstd" (package record). The
	// choice travels in each entry, so replicas write the same bytes; set
	// it alike on every node, and turn it on only once every client (SDK)
	// reading the cluster can decompress.
	Compression string
	// RetentionInterval is how often the leader plans a retention cut
	// under the cluster's policies and commits it (retention.go). 0: only
	// on demand (`tsstore compact`).
	RetentionInterval time.Duration
	// RunCompaction turns on run compaction (runcompact.go): at every
	// retention tick the leader commits the rewrite of the sealed
	// segments of finished runs, dropping the events their latest run
	// snapshot covers but for the kept types (compaction.DefaultKeep).
	// Off by default: it removes events for good.
	RunCompaction bool
	// RunCompactionGrace is how long a run whose last event is not
	// TrainingFinished or TrainingAborted must be idle to count as
	// finished (0: compaction.DefaultRunGrace).
	RunCompactionGrace time.Duration
	// Tier is cold tiering (tiering.go); off when Tier.Target is nil.
	Tier TierConfig
	// CommandTimeout bounds how long a Raft command of the node's own
	// (a retention policy, a cut) may wait to be enqueued.
	CommandTimeout time.Duration
	// RunSnapshotBatches is how many BatchCompleted events of a training
	// run the leader folds between two run snapshots (runsnap.go): the
	// bound on what a resume replays after the newest snapshot. 0: none.
	RunSnapshotBatches uint64
	// MinFreeBytes is the low watermark of free space on the data
	// directory's filesystem, in bytes: below it the leader refuses
	// appends (ResourceExhausted) and the node is not serving (disk.go).
	// DiskResumeBytes is the hysteresis: appends resume once the free
	// space is MinFreeBytes + DiskResumeBytes again.
	MinFreeBytes    int64
	DiskResumeBytes int64
	// freeSpace, if set, replaces the statfs of the data directory (tests).
	freeSpace func(dir string) (int64, error)
	// MaxReadStreams bounds the Read and Subscribe streams a node serves at
	// once (a count); more are refused with ResourceExhausted.
	// MaxStreamsPerConn bounds the concurrent calls of one client
	// connection (HTTP/2 streams; more wait for the client's turn).
	// MaxStreamsPerToken bounds the Read and Subscribe streams served at
	// once for one bearer token, over all its connections, when tokens are
	// on (0: no bound), and separately its AppendStreams; more are refused
	// with ResourceExhausted.
	MaxReadStreams     int
	MaxStreamsPerConn  uint32
	MaxStreamsPerToken int
	// ConnSendBytes and NodeSendBytes bound, in bytes, the Read and
	// Subscribe messages handed to gRPC and not yet known to have left it,
	// per client connection and per node (sendbudget.go): readers that do
	// not read cannot make the node hold more.
	ConnSendBytes int64
	NodeSendBytes int64
	// ConnRequestBytes and NodeRequestBytes bound, in bytes, the Append
	// and AppendStream requests read and not yet answered, per client
	// connection and per node, with a unary Append's request reserved at
	// the largest size (MaxRequestBytes + 1 MiB) while it is read
	// (reqbudget.go). Each must hold two largest requests. A request that
	// does not fit is refused with ResourceExhausted.
	ConnRequestBytes int64
	NodeRequestBytes int64
	// TokenRequestBytes bounds the same for each bearer token, over all
	// its connections, when tokens are on (0: no bound), so that one
	// token's clients cannot take the whole node's budget from another's.
	TokenRequestBytes int64
	// RequestWindowBytes is the static HTTP/2 flow-control window of every
	// API stream, in bytes: what a client can make the node hold for a
	// call whose request the node has not started to read (reqbudget.go).
	RequestWindowBytes int
	// NoRequestGate turns the request gate off (reqgate.go): the one
	// message a streaming call is reading is then bounded only by
	// MaxRequestBytes per open call, as grpc-go alone bounds it. For
	// measuring the gate, and a way back should a client's HTTP/2 confuse
	// it.
	NoRequestGate bool
	// SendStallTimeout: while readers wait for the node's send budget, a
	// client connection with a Read or Subscribe stream blocked in Send
	// for this long is closed (stallcut.go); while appends wait for the
	// node's request budget, so is one with an append request being read
	// and no byte arriving for this long. 0 turns the cut off.
	SendStallTimeout time.Duration
	// RequestMinRate, in bytes per second: while appends wait for the
	// node's request budget, a client connection that has had an append
	// request being read for a whole SendStallTimeout window and received
	// fewer bytes than this rate over it is closed, as one that received
	// none is: a body that trickles holds its read's reservation as long
	// as a stalled one (stallcut.go). 0: only a body that stalls is cut.
	RequestMinRate int64
	// MaxSubscriberLag is how many offsets a live subscriber may fall
	// behind the log end before it is told it is too slow.
	MaxSubscriberLag uint64

	// MetricsAddr is the host:port serving Prometheus metrics at GET
	// /metrics over plain HTTP; empty disables the endpoint. Port 0 picks
	// a free port (Node.MetricsAddr reports it).
	MetricsAddr string

	// TLS names the certificate files for the API and for node-to-node
	// mutual TLS (tls.go); the zero value is plaintext.
	TLS TLSConfig
	// AuthTokensFile, if set, turns on bearer-token authentication with
	// the tokens in this file (auth.go); it requires TLS.
	AuthTokensFile string

	// Segment configures the segment log.
	Segment segment.Options
	// RaftLogFS, if set, is the filesystem of the Raft log's segment files
	// (raft-wal's VFS); nil is the operating system's. The fault-injection
	// build sets one that loses unsynced writes on a kill.
	RaftLogFS types.VFS
	// Logger receives structured logs; nil uses slog.Default().
	Logger *slog.Logger
	// OnOpen, if set, is called by New at each step of opening the node
	// (segment log, Raft log, Raft, API), with a line for an operator; the
	// serve command forwards it to systemd as STATUS=. New logs each step
	// either way.
	OnOpen func(step string)
}

// DefaultConfig returns defaults for a node; NodeID, DataDir, RaftAddr and
// APIAddr must still be set.
func DefaultConfig() Config {
	return Config{
		ClusterName:            "tsstore",
		HeartbeatTimeout:       300 * time.Millisecond, // docs/benchmarks.md, failover: why 300 ms
		ElectionTimeout:        300 * time.Millisecond,
		LeaderLeaseTimeout:     300 * time.Millisecond,
		CommitTimeout:          5 * time.Millisecond,
		SnapshotThreshold:      4096,
		SnapshotInterval:       10 * time.Second,
		TrailingLogs:           4096,
		SnapshotRetain:         2,
		SnapshotThresholdBytes: 64 << 20,
		TrailingBytes:          128 << 20,
		LogCacheBytes:          16 << 20,
		MaxEventBytes:          1 << 20,
		MaxRequestBytes:        16 << 20,
		MaxEntryBytes:          4 << 20,
		MaxEntryRequests:       4096,
		MaxInflightEntries:     64,
		MaxInflightBytes:       64 << 20,
		MaxStreamInflight:      256,
		ReadMessageBytes:       1 << 20,
		MaxSubscriberLag:       1 << 20,
		ProducerTTL:            7 * 24 * time.Hour,
		Compression:            "none",
		RetentionInterval:      time.Minute,
		Tier:                   TierConfig{Interval: 30 * time.Second, MaxBackoff: 5 * time.Minute, SweepInterval: time.Hour, DeleteDelay: 5 * time.Minute, Cache: tiering.DefaultCacheConfig()},
		CommandTimeout:         5 * time.Second,
		RunSnapshotBatches:     5000,
		MinFreeBytes:           256 << 20,
		DiskResumeBytes:        64 << 20,
		MaxReadStreams:         4096,
		MaxStreamsPerConn:      1024,
		MaxStreamsPerToken:     1024,
		ConnSendBytes:          8 << 20,
		NodeSendBytes:          32 << 20,
		SendStallTimeout:       2 * time.Second,
		RequestMinRate:         1 << 20,
		ConnRequestBytes:       64 << 20,
		NodeRequestBytes:       128 << 20,
		TokenRequestBytes:      64 << 20,
		RequestWindowBytes:     64 << 10,
		Segment:                segment.DefaultOptions(),
	}
}

var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// validateIdentity checks what names a node's data directory; serve and
// restore share it.
func validateIdentity(nodeID, cluster, dataDir string) []error {
	var errs []error
	if !idPattern.MatchString(nodeID) {
		errs = append(errs, fmt.Errorf("node id %q: want 1-64 of [A-Za-z0-9._-]", nodeID))
	}
	if !idPattern.MatchString(cluster) {
		errs = append(errs, fmt.Errorf("cluster name %q: want 1-64 of [A-Za-z0-9._-]", cluster))
	}
	if dataDir == "" {
		errs = append(errs, errors.New("data dir is required"))
	}
	return errs
}

// Validate checks the configuration.
func (c Config) Validate() error {
	var errs []error
	errs = append(errs, validateIdentity(c.NodeID, c.ClusterName, c.DataDir)...)
	for name, a := range map[string]string{"raft address": c.RaftAddr, "api address": c.APIAddr} {
		if _, _, err := net.SplitHostPort(a); err != nil {
			errs = append(errs, fmt.Errorf("%s %q: %v", name, a, err))
		}
	}
	seen := map[string]bool{}
	for _, p := range c.Bootstrap {
		if !idPattern.MatchString(p.ID) || seen[p.ID] {
			errs = append(errs, fmt.Errorf("bootstrap peer id %q invalid or repeated", p.ID))
		}
		seen[p.ID] = true
		if _, _, err := net.SplitHostPort(p.RaftAddr); err != nil {
			errs = append(errs, fmt.Errorf("bootstrap peer %s address %q: %v", p.ID, p.RaftAddr, err))
		}
	}
	if c.MetricsAddr != "" {
		if _, _, err := net.SplitHostPort(c.MetricsAddr); err != nil {
			errs = append(errs, fmt.Errorf("metrics address %q: %v", c.MetricsAddr, err))
		}
	}
	for id, a := range c.RaftDialOverrides {
		if _, _, err := net.SplitHostPort(a); err != nil {
			errs = append(errs, fmt.Errorf("raft dial override for %s %q: %v", id, a, err))
		}
	}
	if len(c.Bootstrap) > 0 && !seen[c.NodeID] {
		errs = append(errs, fmt.Errorf("bootstrap peers do not include this node %q", c.NodeID))
	}
	if c.HeartbeatTimeout < 5*time.Millisecond || c.ElectionTimeout < c.HeartbeatTimeout ||
		c.LeaderLeaseTimeout <= 0 || c.LeaderLeaseTimeout > c.HeartbeatTimeout || c.CommitTimeout <= 0 {
		errs = append(errs, errors.New("raft timeouts: need heartbeat >= 5ms, election >= heartbeat, 0 < lease <= heartbeat, commit > 0"))
	}
	if c.SnapshotThreshold == 0 || c.SnapshotInterval <= 0 || c.SnapshotRetain < 1 {
		errs = append(errs, errors.New("snapshot threshold, interval and retain must be positive"))
	}
	if c.SnapshotThresholdBytes < 1<<20 || c.TrailingBytes < 1<<20 || c.LogCacheBytes < 0 {
		errs = append(errs, errors.New("need snapshot threshold bytes and trailing bytes >= 1 MiB, log cache bytes >= 0"))
	}
	if c.MaxEventBytes <= 0 || c.MaxRequestBytes < c.MaxEventBytes || c.MaxRequestBytes > 32<<20 {
		errs = append(errs, errors.New("need 0 < max event bytes <= max request bytes <= 32 MiB"))
	}
	if c.MaxEntryBytes <= 0 || c.MaxEntryBytes > 16<<20 || c.MaxEntryRequests <= 0 || c.MaxInflightEntries <= 0 || c.MaxInflightBytes < int64(c.MaxEntryBytes) {
		errs = append(errs, errors.New("need 0 < max entry bytes <= 16 MiB, positive max entry requests and inflight entries, max inflight bytes >= max entry bytes"))
	}
	if c.MinFreeBytes < 0 || c.DiskResumeBytes < 0 {
		errs = append(errs, errors.New("min free bytes and disk resume bytes must not be negative"))
	}
	if c.ProducerTTL < 0 {
		errs = append(errs, errors.New("producer ttl must not be negative (0: never expire)"))
	}
	if c.Compression != "none" && c.Compression != "zstd" {
		errs = append(errs, fmt.Errorf("compression %q: want none or zstd", c.Compression))
	}
	if c.RetentionInterval < 0 || c.CommandTimeout <= 0 || c.RunCompactionGrace < 0 {
		errs = append(errs, errors.New("retention interval must not be negative (0: on demand only) and command timeout must be positive"))
	}
	if err := c.Tier.validate(); err != nil {
		errs = append(errs, err)
	}
	if c.MaxReadStreams <= 0 || c.MaxStreamsPerConn == 0 {
		errs = append(errs, errors.New("max read streams and max streams per connection must be positive"))
	}
	if c.SendStallTimeout < 0 {
		errs = append(errs, errors.New("send stall timeout must not be negative (0: never cut)"))
	}
	if c.RequestMinRate < 0 {
		errs = append(errs, errors.New("request min rate must not be negative (0: only stalled bodies are cut)"))
	}
	if c.MaxStreamsPerToken < 0 {
		errs = append(errs, errors.New("max streams per token must not be negative (0: no bound)"))
	}
	if c.ConnSendBytes < 4*int64(c.ReadMessageBytes) || c.NodeSendBytes < c.ConnSendBytes {
		errs = append(errs, errors.New("need conn send bytes >= 4 x read message bytes, node send bytes >= conn send bytes"))
	}
	if maxRead := int64(c.MaxRequestBytes) + 1<<20; c.ConnRequestBytes < 2*maxRead || c.NodeRequestBytes < c.ConnRequestBytes {
		errs = append(errs, fmt.Errorf("need conn request bytes >= 2 x (max request bytes + 1 MiB) = %d, node request bytes >= conn request bytes", 2*maxRead))
	}
	if maxRead := int64(c.MaxRequestBytes) + 1<<20; c.TokenRequestBytes < 0 || c.TokenRequestBytes > 0 && c.TokenRequestBytes < 2*maxRead {
		errs = append(errs, fmt.Errorf("need token request bytes >= 2 x (max request bytes + 1 MiB) = %d, or 0 for no bound per token", 2*maxRead))
	}
	if c.RequestWindowBytes < 64<<10 || c.RequestWindowBytes > 16<<20 {
		errs = append(errs, errors.New("request window bytes must be in [64 KiB, 16 MiB]"))
	}
	if c.MaxStreamInflight <= 0 || c.MaxStreamInflight > 1<<16 {
		errs = append(errs, errors.New("max stream inflight must be in [1, 65536]"))
	}
	if c.MaxSubscriberLag == 0 {
		errs = append(errs, errors.New("max subscriber lag must be positive"))
	}
	if c.ReadMessageBytes < 64<<10 || c.ReadMessageBytes > 16<<20 {
		errs = append(errs, errors.New("read message bytes must be in [64 KiB, 16 MiB]"))
	}
	if err := c.Segment.Validate(); err != nil {
		errs = append(errs, err)
	}
	if _, err := c.loadSecurity(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (c Config) apiAdvertise() string {
	if c.APIAdvertise != "" {
		return c.APIAdvertise
	}
	return c.APIAddr
}

// compressionCodec is the record codec of Compression.
func (c Config) compressionCodec() byte {
	if c.Compression == "zstd" {
		return record.CompressionZstd
	}
	return record.CompressionNone
}
