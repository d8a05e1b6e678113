package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"github.com/BurntSushi/toml"
	"github.com/hashicorp/raft-wal/types"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/tsstore/tsstore/fsm"
	"github.com/tsstore/tsstore/record"
	"github.com/tsstore/tsstore/segment"
	"github.com/tsstore/tsstore/server"
)

// segmentFS, when set (by faultfs.go under the faultfs build tag),
// replaces the segment log's filesystem.
var segmentFS segment.FS

// raftLogFS, likewise, is the Raft log's (raft-wal's) filesystem.
var raftLogFS types.VFS

// serveFlags binds every server setting to a flag. The same names, with
// dashes as underscores, are the keys of the config file, and with a
// TSSTORE_ prefix in upper case, environment variables. Precedence: flag,
// then environment, then file, then default.
type serveFlags struct {
	fs        *pflag.FlagSet
	cfg       server.Config
	config    string
	bootstrap string
	dialOver  string
	logFormat string
	logLevel  string
	check     bool
	tier      tierFlags
}

func newServeCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "serve --id ID --data-dir DIR --raft-addr HOST:PORT --api-addr HOST:PORT [flags]",
		Short: "run one tsstore node",
		Long: "serve runs one node. Every flag is also a key of the --config TOML file (with _ for -) and a\n" +
			"TSSTORE_<NAME> environment variable; precedence: flag, then environment, then file, then default.",
		Args: noArgs,
	}
	s := newServeFlags(cmd.Flags())
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		stdout, stderr := stdio(cmd)
		return runServe(s, stdout, stderr)
	}
	return cmd
}

// newServeFlags defines serve's flags on fs.
func newServeFlags(fs *pflag.FlagSet) *serveFlags {
	s := &serveFlags{fs: fs, cfg: server.DefaultConfig()}
	c := &s.cfg
	fs.StringVar(&s.config, "config", "", "TOML config file; keys are the flag names with _ for -")
	fs.StringVar(&c.NodeID, "id", "", "this node's id (required)")
	fs.StringVar(&c.ClusterName, "cluster", c.ClusterName, "cluster name, recorded in the data directory")
	fs.StringVar(&c.DataDir, "data-dir", "", "data directory (required)")
	fs.StringVar(&c.RaftAddr, "raft-addr", "", "host:port for Raft traffic (required)")
	fs.StringVar(&c.APIAddr, "api-addr", "", "host:port for the gRPC API (required)")
	fs.StringVar(&c.APIAdvertise, "api-advertise", "", "API address given to clients and peers (default: api-addr)")
	fs.StringVar(&s.bootstrap, "bootstrap", "", "initial voters: id=raft-host:port,... (ignored once the node has state)")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", "", "host:port serving Prometheus metrics at /metrics over HTTP (empty: off)")
	fs.StringVar(&s.dialOver, "raft-dial-override", "", "dial these addresses for peers instead of their configured ones: id=host:port,... (fault-injection proxies)")
	// Security (docs/operations.md#security); all off by default.
	fs.StringVar(&c.TLS.CertFile, "tls-cert", "", "PEM certificate the gRPC API presents; turns on TLS for clients (needs the peer-tls-* files)")
	fs.StringVar(&c.TLS.KeyFile, "tls-key", "", "PEM private key of tls-cert")
	fs.StringVar(&c.TLS.ClientCAFile, "tls-client-ca", "", "PEM CA bundle; clients must present a certificate under it (mutual TLS for clients)")
	fs.StringVar(&c.TLS.PeerCertFile, "peer-tls-cert", "", "PEM node certificate for mutual TLS between nodes (serverAuth+clientAuth, DNS name peer-tls-name)")
	fs.StringVar(&c.TLS.PeerKeyFile, "peer-tls-key", "", "PEM private key of peer-tls-cert")
	fs.StringVar(&c.TLS.PeerCAFile, "peer-tls-ca", "", "PEM CA bundle node certificates must chain to")
	fs.StringVar(&c.TLS.PeerName, "peer-tls-name", "", "DNS name every node certificate carries and nodes check (default: the cluster name)")
	fs.StringVar(&c.AuthTokensFile, "auth-tokens-file", "", "file of '<role> <name> <token or sha256:hex>' lines; turns on bearer-token authentication (needs tls-cert)")
	fs.DurationVar(&c.HeartbeatTimeout, "heartbeat-timeout", c.HeartbeatTimeout, "raft heartbeat timeout")
	fs.DurationVar(&c.ElectionTimeout, "election-timeout", c.ElectionTimeout, "raft election timeout")
	fs.DurationVar(&c.LeaderLeaseTimeout, "leader-lease-timeout", c.LeaderLeaseTimeout, "raft leader lease timeout")
	fs.DurationVar(&c.CommitTimeout, "commit-timeout", c.CommitTimeout, "raft commit timeout")
	fs.Uint64Var(&c.SnapshotThreshold, "snapshot-threshold", c.SnapshotThreshold, "raft entries between snapshots")
	fs.DurationVar(&c.SnapshotInterval, "snapshot-interval", c.SnapshotInterval, "how often the snapshot threshold is checked")
	fs.Uint64Var(&c.TrailingLogs, "trailing-logs", c.TrailingLogs, "raft entries kept after a snapshot")
	fs.IntVar(&c.SnapshotRetain, "snapshot-retain", c.SnapshotRetain, "snapshots kept on disk")
	fs.Int64Var(&c.SnapshotThresholdBytes, "snapshot-threshold-bytes", c.SnapshotThresholdBytes, "raft log bytes beyond trailing-bytes that trigger a snapshot")
	fs.Int64Var(&c.TrailingBytes, "trailing-bytes", c.TrailingBytes, "raft log bytes kept after a snapshot (trailing-logs caps their count)")
	fs.Int64Var(&c.LogCacheBytes, "log-cache-bytes", c.LogCacheBytes, "bytes of recent raft entries cached in memory for replication")
	fs.Int64Var(&c.MinFreeBytes, "min-free-bytes", c.MinFreeBytes, "low watermark of free disk space, bytes: below it appends are refused and the node is not serving")
	fs.Int64Var(&c.DiskResumeBytes, "disk-resume-bytes", c.DiskResumeBytes, "appends resume once free space is min-free-bytes plus this many bytes")
	fs.IntVar(&c.MaxReadStreams, "max-read-streams", c.MaxReadStreams, "Read and Subscribe streams served at once; more are refused (ResourceExhausted)")
	fs.Func("max-streams-per-conn", fmt.Sprintf("concurrent calls of one client connection (default %d)", c.MaxStreamsPerConn), func(v string) error {
		n, err := strconv.ParseUint(v, 10, 32)
		c.MaxStreamsPerConn = uint32(n)
		return err
	})
	fs.IntVar(&c.MaxStreamsPerToken, "max-streams-per-token", c.MaxStreamsPerToken, "Read and Subscribe streams served at once for one bearer token, over all its connections, and apart from them its AppendStreams (0: no bound)")
	fs.Int64Var(&c.ConnSendBytes, "conn-send-bytes", c.ConnSendBytes, "read messages one client connection may have in gRPC's hands, bytes")
	fs.Int64Var(&c.NodeSendBytes, "node-send-bytes", c.NodeSendBytes, "read messages the node may have in gRPC's hands, bytes")
	fs.Int64Var(&c.ConnRequestBytes, "conn-request-bytes", c.ConnRequestBytes, "append requests one client connection may have read and not yet answered, bytes (a unary append counts max-request-bytes + 1 MiB while it is read); more are refused (ResourceExhausted)")
	fs.Int64Var(&c.TokenRequestBytes, "token-request-bytes", c.TokenRequestBytes, "append requests one bearer token's clients may have read and not yet answered, over all their connections, bytes, when tokens are on (0: no bound); more wait or are refused (ResourceExhausted)")
	fs.Int64Var(&c.NodeRequestBytes, "node-request-bytes", c.NodeRequestBytes, "append requests the node may have read and not yet answered, bytes; more are refused (ResourceExhausted)")
	fs.BoolFunc("request-gate", "reserve each streaming call's large messages (AppendStream) from conn-request-bytes and node-request-bytes before the node reads them, holding the stream's flow-control window until there is room (default true; false bounds them only per open call)", func(v string) error {
		on, err := strconv.ParseBool(v)
		c.NoRequestGate = !on
		return err
	})
	fs.IntVar(&c.RequestWindowBytes, "request-window-bytes", c.RequestWindowBytes, "static HTTP/2 window of every API stream, bytes: what a call may send before the node reads its request")
	fs.DurationVar(&c.SendStallTimeout, "send-stall-timeout", c.SendStallTimeout, "while readers wait for node-send-bytes, close a client connection with a read stream blocked in Send this long; while appends wait for node-request-bytes, one whose append request being read got no byte this long (0: never)")
	fs.Int64Var(&c.RequestMinRate, "request-min-rate", c.RequestMinRate, "while appends wait for node-request-bytes, close a client connection that received less than this many bytes per second over a send-stall-timeout window in which an append request of it was being read (a trickling body; 0: only a stalled body is cut)")
	fs.StringVar(&c.Compression, "compression", c.Compression, "how batches are stored: none or zstd (set alike on every node; clients must be able to decompress)")
	fs.DurationVar(&c.RetentionInterval, "retention-interval", c.RetentionInterval, "how often the leader applies the retention policies (0: only on `tsstore compact`)")
	fs.BoolVar(&c.RunCompaction, "run-compaction", c.RunCompaction, "at every retention tick, drop from sealed segments the events of finished training runs that their latest run snapshot covers, but for the kept types (docs/operations.md, Run compaction)")
	fs.DurationVar(&c.RunCompactionGrace, "run-compaction-grace", c.RunCompactionGrace, "a run without TrainingFinished or TrainingAborted counts as finished after this long idle (0: 7 days)")
	fs.DurationVar(&c.ProducerTTL, "producer-ttl", c.ProducerTTL, "forget a producer's dedup state after it has not appended for this long (0: never)")
	fs.Uint64Var(&c.RunSnapshotBatches, "run-snapshot-batches", c.RunSnapshotBatches, "write a training run's state snapshot every this many BatchCompleted events of the run (0: never)")
	fs.IntVar(&c.MaxEventBytes, "max-event-bytes", c.MaxEventBytes, "largest event (payload + metadata), bytes")
	fs.IntVar(&c.MaxRequestBytes, "max-request-bytes", c.MaxRequestBytes, "largest append request, bytes")
	fs.IntVar(&c.MaxEntryBytes, "max-entry-bytes", c.MaxEntryBytes, "group commit: bytes per raft entry")
	fs.Int64Var(&c.MaxInflightBytes, "max-inflight-bytes", c.MaxInflightBytes, "group commit: bytes of raft entries proposed and not yet answered (one larger entry goes alone); also the most entry bytes one raft append RPC carries to a follower")
	fs.Int64Var(&c.Segment.SegmentBytes, "segment-bytes", c.Segment.SegmentBytes, "segment roll size, bytes")
	s.addTierFlags(fs)
	fs.StringVar(&s.logFormat, "log-format", "json", "log format: json or text")
	fs.StringVar(&s.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.BoolVar(&s.check, "check-config", false, "validate the configuration and exit")
	return s
}

// parse applies the config file and the environment under the flags,
// which cobra has parsed: a flag given on the command line is left as is.
func (s *serveFlags) parse() error {
	set := map[string]bool{}
	s.fs.Visit(func(f *pflag.Flag) { set[f.Name] = true })
	if s.config != "" {
		if err := s.applyFile(s.config, set); err != nil {
			return err
		}
	}
	var errs []string
	s.fs.VisitAll(func(f *pflag.Flag) {
		if f.Name == "help" {
			return // cobra's own flag, not a setting
		}
		env := "TSSTORE_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok && !set[f.Name] {
			if err := f.Value.Set(v); err != nil {
				errs = append(errs, fmt.Sprintf("%s: %v", env, err))
			}
		}
	})
	if len(errs) > 0 {
		return fmt.Errorf("environment: %s", strings.Join(errs, "; "))
	}
	// Flags given on the command line win over file and environment: both
	// skipped the flags in set.
	peers, err := parsePeers(s.bootstrap)
	if err != nil {
		return err
	}
	s.cfg.Bootstrap = peers
	over, err := parsePeers(s.dialOver)
	if err != nil {
		return err
	}
	if len(over) > 0 {
		s.cfg.RaftDialOverrides = map[string]string{}
		for _, p := range over {
			s.cfg.RaftDialOverrides[p.ID] = p.RaftAddr
		}
	}
	if err := s.tierTarget(); err != nil {
		return err
	}
	return s.cfg.Validate()
}

// applyFile sets every flag named in a TOML file. Unknown keys are errors.
func (s *serveFlags) applyFile(path string, set map[string]bool) error {
	var m map[string]any
	_, err := toml.DecodeFile(path, &m)
	if err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	var unknown []string
	for key, v := range m {
		name := strings.ReplaceAll(key, "_", "-")
		f := s.fs.Lookup(name)
		if f == nil || name == "config" || name == "help" {
			unknown = append(unknown, key)
			continue
		}
		if set[name] {
			continue
		}
		if list, ok := v.([]any); ok {
			parts := make([]string, len(list))
			for i, x := range list {
				parts[i] = fmt.Sprint(x)
			}
			v = strings.Join(parts, ",")
		}
		if err := f.Value.Set(fmt.Sprint(v)); err != nil {
			return fmt.Errorf("config %s: key %s: %v", path, key, err)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return fmt.Errorf("config %s: unknown keys %s", path, strings.Join(unknown, ", "))
	}
	return nil
}

func parsePeers(s string) ([]server.Peer, error) {
	if s == "" {
		return nil, nil
	}
	var peers []server.Peer
	for _, part := range strings.Split(s, ",") {
		id, addr, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return nil, fmt.Errorf("%w: bootstrap peer %q: want id=host:port", errUsage, part)
		}
		peers = append(peers, server.Peer{ID: id, RaftAddr: addr})
	}
	return peers, nil
}

func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("%w: log level %q", errUsage, level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("%w: log format %q (want json or text)", errUsage, format)
}

func runServe(s *serveFlags, stdout, stderr io.Writer) error {
	if err := s.parse(); err != nil {
		return configError(err)
	}
	logger, err := newLogger(stderr, s.logFormat, s.logLevel)
	if err != nil {
		return configError(err)
	}
	if s.check {
		// parse validated the settings and loaded the TLS and token files
		// (server.Config.Validate), as New does before it opens the data
		// (ExecStartPre in deploy/systemd/tsstore.service).
		fmt.Fprintln(stdout, "configuration ok")
		return nil
	}
	s.cfg.Logger = logger
	if segmentFS != nil {
		s.cfg.Segment.FS = segmentFS
		s.cfg.RaftLogFS = raftLogFS
		logger.Warn("fault-injection filesystem: unsynced segment and raft log writes are lost on kill")
	}
	sdc := openNotify(logger) // systemd status, readiness and watchdog (notify.go)
	opening := startOpenStatus(sdc)
	s.cfg.OnOpen = opening.onOpen
	node, err := server.New(s.cfg)
	opening.done()
	if err != nil {
		if sdc != nil {
			sdc.send("STATUS=failed to open: " + err.Error() + "\n")
		}
		return permanent(err)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sig)
	sd := startNotify(sdc, node, logger, readyGrace)
	for {
		select {
		case got := <-sig:
			if got == syscall.SIGHUP {
				// Re-read certificates, CAs and the tokens file; the node
				// logs the outcome (docs/operations.md#security).
				node.ReloadSecurity()
				continue
			}
			logger.Info("shutting down", "signal", got.String())
			sd.stopping("shutting down on " + got.String())
			return node.Close()
		case ferr := <-node.Fatal():
			sd.stopping("failed: " + ferr.Error())
			node.Close()
			return permanent(ferr)
		}
	}
}

// configError gives a configuration error of serve (a bad flag, value,
// environment variable or config file; invalid settings; unusable TLS or
// token files) exit status 78, EX_CONFIG: starting again with the same
// configuration cannot succeed, and the systemd unit does not restart on
// it (RestartPreventExitStatus). -h still exits 0.
func configError(err error) error {
	if errors.Is(err, pflag.ErrHelp) {
		return err
	}
	if errors.Is(err, errUsage) {
		// The command dispatcher maps errUsage to 2 before it looks at
		// exitError; for serve a usage error is a configuration error.
		err = errors.New(strings.TrimPrefix(err.Error(), errUsage.Error()+": "))
	}
	return exitError{code: exitPermanent, err: err}
}

// permanent gives errors that a restart cannot mend their own exit status.
func permanent(err error) error {
	if errors.Is(err, server.ErrConfig) {
		return configError(err)
	}
	if errors.Is(err, server.ErrNodeRemoved) || errors.Is(err, server.ErrWrongCluster) || errors.Is(err, fsm.ErrDataLoss) ||
		errors.Is(err, record.ErrCorrupt) || errors.Is(err, server.ErrRaftLogDamaged) || errors.Is(err, fsm.ErrChecksumMismatch) {
		return exitError{code: exitPermanent, err: err}
	}
	return err
}
