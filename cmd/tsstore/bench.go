package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/tsstore/tsstore/bench"
	"github.com/tsstore/tsstore/client"
	"github.com/tsstore/tsstore/internal/proccluster"
	"github.com/tsstore/tsstore/server"
)

// The workloads of `tsstore bench`, in the order they run. f kills the
// leader, so it runs last; g measures the log the others wrote; x leaves
// the leader's memory as the hostile clients left it, so it runs after
// the others that measure memory; k's retention policy drops what the
// others wrote, so it runs after them (but before f).
// t restarts every node with cold tiering on, so it runs after the others
// that measure the cluster as started (but before f).
var benchWorkloads = []string{"a", "b", "c", "d", "e", "h", "g", "r", "x", "k", "t", "f"}

type benchFlags struct {
	addrs        string
	local        string
	keep         bool
	workloads    map[string]bool
	duration     time.Duration
	producers    int
	size         int
	events       []int
	streamEvents int
	batch        int
	inflight     int
	window       int
	failovers    int
	jsonOut      string
	plots        string
	profile      string
	serveArgs    []string
	unaryAppend  bool
	secure       bool
	hostile      hostileFlags
	kMaxBytes    int64
	tier         tierBenchFlags
}

// parseBenchFlags parses bench's command line (for tests).
func parseBenchFlags(args []string, stderr io.Writer) (*benchFlags, error) {
	fs := pflag.NewFlagSet("bench", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	finish := registerBenchFlags(fs)
	if err := fs.Parse(args); err != nil {
		return nil, fmt.Errorf("%w: %v", errUsage, err)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
	}
	return finish()
}

func newBenchCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench [--addr A | --local DIR] [--workloads a,b,c,d,e,f,g] [--duration D] [--out FILE] [--plots DIR] ...",
		Short: "benchmark appends, replay, failover and disk use (docs/benchmarks.md)",
		Long: "bench runs the workloads of docs/benchmarks.md and prints a table. --out FILE (alias --json FILE,\n" +
			"kept for scripts) also writes the results as one JSON object to FILE.",
		Args: noArgs,
	}
	finish := registerBenchFlags(cmd.Flags())
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		f, err := finish()
		if err != nil {
			return err
		}
		stdout, stderr := stdio(cmd)
		return runBench(f, stdout, stderr)
	}
	return cmd
}

// registerBenchFlags defines bench's flags on fs; the function it returns
// checks them once parsed.
func registerBenchFlags(fs *pflag.FlagSet) func() (*benchFlags, error) {
	f := new(benchFlags)
	fs.StringVar(&f.addrs, "addr", "", "comma-separated API addresses of a running cluster (default: start a local three-node cluster)")
	fs.StringVar(&f.local, "local", "", "data directory of the local cluster (default: a temp dir, removed afterwards)")
	fs.BoolVar(&f.keep, "keep", false, "keep the local cluster's data directory")
	wl := fs.String("workloads", "a,b,c,d,e,f,g,h", "workloads to run: a (1 waiting producer), b (N waiting producers), c (batching producer), d (replay), e (stream replay), f (failover), g (disk use), h (memory and restart per log size), r (training run: resume and time travel per run size; not in the default set), x (hostile clients on the leader: memory and c's rate beside them; not in the default set; turns on --secure), k (appends during retention cuts and run compaction: b's producers without and with compaction; not in the default set; starts the local cluster with small segments, a 1 s retention interval and --run-compaction), t (replay from cold with about 90% of the log tiered vs all local, and disk per node: restarts the nodes with cold tiering on; not in the default set; starts the local cluster with 8 MiB segments)")
	fs.DurationVar(&f.duration, "duration", 10*time.Second, "length of each timed workload (a, b, c) and of the steady phase around each kill (f)")
	fs.IntVar(&f.producers, "producers", 64, "concurrent waiting producers in b and f")
	fs.IntVar(&f.size, "size", 256, "payload bytes per event")
	sizes := fs.String("events", "1000000,10000000", "log sizes (events) to load and replay from offset 0 in d, cumulatively; e uses the largest")
	fs.IntVar(&f.streamEvents, "stream-events", 100000, "events of the one stream e replays by itself (interleaved evenly into the log)")
	fs.IntVar(&f.batch, "batch", client.DefaultAsyncOptions().MaxBatchEvents, "c: most events per append request")
	fs.IntVar(&f.inflight, "inflight", client.DefaultAsyncOptions().MaxInflight, "c: append requests in flight (1-8)")
	fs.IntVar(&f.window, "window", 0, "c: most events sent and not yet acknowledged (0: bounded only by the producer's own queue, about 34k events)")
	fs.IntVar(&f.failovers, "failovers", 5, "f: leader kills (the median is reported)")
	fs.StringVar(&f.jsonOut, "out", "", "also write the results as one JSON object to this file")
	fs.StringVar(&f.jsonOut, "json", "", "same as --out (kept for scripts: bench's --json takes a FILE)")
	fs.StringVar(&f.plots, "plots", "", "write plots (PNG) into this directory")
	fs.StringVar(&f.profile, "profile", "", "local cluster: write CPU profiles of the leader (and of this client) during a, b and c into this directory")
	fs.BoolVar(&f.unaryAppend, "unary-append", false, "send every append as a unary Append call instead of over the client's shared AppendStream (to compare the two)")
	fs.BoolVar(&f.secure, "secure", false, "local cluster: TLS between nodes and for clients, and bearer tokens (a throwaway CA and tokens file in the cluster's directory); this client appends with an append token")
	f.hostile.register(fs)
	fs.Int64Var(&f.kMaxBytes, "k-max-bytes", 32<<20, "k: max bytes of the retention policy on every stream set for k-compacting (the local cluster's segments are 1 MiB unless --serve-args says otherwise; with too small a policy, retention cuts the segments before run compaction rewrites them)")
	fs.IntVar(&f.tier.events, "t-events", 1000000, "t: events in the log it tiers and replays (d's loader; the whole log is replayed if others made it larger)")
	fs.Int64Var(&f.tier.cacheBytes, "t-cache-bytes", 24<<20, "t: --tier-cache-bytes of every node (small, so the replay reads the tiered part from the store; the server wants at least readahead + 2 blocks: 24 MiB with the defaults)")
	tierArgs := fs.String("t-tier-args", "", "t: extra `tsstore serve` flags for the restart with tiering, space-separated, after t's own (default target: --tier-dir <cluster dir>/tier; e.g. \"--tier-s3-endpoint http://127.0.0.1:7070 --tier-s3-bucket b --tier-s3-path-style\", credentials from the AWS_* environment)")
	serveArgs := fs.String("serve-args", "", "local cluster: extra `tsstore serve` flags for every node, space-separated (e.g. \"--heartbeat-timeout 300ms\")")
	return func() (*benchFlags, error) {
		f.serveArgs = strings.Fields(*serveArgs)
		f.tier.tierArgs = strings.Fields(*tierArgs)
		f.workloads = map[string]bool{}
		for _, w := range strings.Split(*wl, ",") {
			w = strings.TrimSpace(w)
			if !slices.Contains(benchWorkloads, w) {
				return nil, fmt.Errorf("%w: --workloads: unknown workload %q (want some of a,b,c,d,e,f,g,h,k,r,t,x)", errUsage, w)
			}
			f.workloads[w] = true
		}
		for _, s := range strings.Split(*sizes, ",") {
			var n int
			if _, err := fmt.Sscan(s, &n); err != nil || n <= 0 {
				return nil, fmt.Errorf("%w: --events %q", errUsage, *sizes)
			}
			f.events = append(f.events, n)
		}
		slices.Sort(f.events)
		if f.workloads["x"] {
			f.secure = true // the hostile appends are refused for want of a token
		}
		if err := f.hostile.validate(); err != nil {
			return nil, err
		}
		switch {
		case f.duration <= 0 || f.producers <= 0 || f.size <= 0 || f.streamEvents <= 0 || f.batch <= 0 || f.failovers <= 0 || f.window < 0 || f.kMaxBytes <= 0 || f.tier.events <= 0 || f.tier.cacheBytes <= 0:
			return nil, fmt.Errorf("%w: --duration, --producers, --size, --stream-events, --batch, --failovers, --k-max-bytes, --t-events and --t-cache-bytes must be positive", errUsage)
		case f.inflight < 1 || f.inflight > 8:
			return nil, fmt.Errorf("%w: --inflight must be in [1, 8]", errUsage)
		case f.addrs != "" && (f.workloads["f"] || f.workloads["g"] || f.workloads["h"] || f.workloads["x"] || f.workloads["k"] || f.workloads["t"] || f.profile != "" || f.secure):
			return nil, fmt.Errorf("%w: f (kills the leader), g (reads data directories), h (restarts a node), x, k and t (read the nodes' metrics; t restarts them), --profile and --secure need the local cluster; drop --addr or select other workloads", errUsage)
		}
		return f, nil
	}
}

func runBench(f *benchFlags, stdout, stderr io.Writer) error {
	var err error
	ctx, cancel := signalContext()
	defer cancel()
	prog := bench.NewProgress(stderr)
	var lc *benchLocal
	addrs := strings.Split(f.addrs, ",")
	if f.addrs == "" {
		if lc, err = startBenchLocal(ctx, f, stderr); err != nil {
			return err
		}
		defer lc.close(f.keep)
		addrs = lc.c.APIAddrs()
	}
	ccfg := client.DefaultConfig(addrs...)
	ccfg.UnaryAppend = f.unaryAppend
	if lc != nil && lc.sec != nil {
		ccfg.TLS, ccfg.Token = lc.sec.tls, lc.sec.appendToken
	}
	cl, err := client.New(ccfg)
	if err != nil {
		return err
	}
	defer cl.Close()
	for _, dir := range []string{f.plots, f.profile} {
		if dir != "" {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
		}
	}
	b := &benchRun{f: f, cl: cl, lc: lc, log: stderr, prog: prog, payload: make([]byte, f.size),
		runID: fmt.Sprintf("%d", time.Now().UnixNano()), lat: map[string]*bench.Histogram{}}
	report := bench.Report{System: "tsstore", Machine: bench.ThisMachine(), Config: b.config()}
	for _, w := range benchWorkloads {
		if !f.workloads[w] {
			continue
		}
		res, err := b.workload(ctx, w)
		if err != nil {
			return fmt.Errorf("workload %s: %w", w, err)
		}
		report.Results = append(report.Results, res...)
		for _, r := range res {
			fmt.Fprintf(stderr, "bench: %s done: %.0f events/s\n", r.Workload, r.EventsPS)
		}
	}
	if err := report.PrintTable(stdout); err != nil {
		return err
	}
	if f.jsonOut != "" {
		if err := report.WriteJSON(f.jsonOut); err != nil {
			return err
		}
	}
	return b.writePlots()
}

func (b *benchRun) workload(ctx context.Context, w string) ([]bench.Result, error) {
	switch w {
	case "a":
		return b.waiting(ctx, "a", "1 producer, waiting", 1)
	case "b":
		return b.waiting(ctx, "b", fmt.Sprintf("%d producers, waiting", b.f.producers), b.f.producers)
	case "c":
		return b.batching(ctx)
	case "d":
		return b.replays(ctx)
	case "e":
		return b.streamReplay(ctx)
	case "g":
		return b.diskUse(ctx)
	case "h":
		return b.memoryAndRestart(ctx)
	case "r":
		return b.runs(ctx)
	case "x":
		return b.hostileClients(ctx)
	case "k":
		return b.compactionLoad(ctx)
	case "t":
		return b.tierReplay(ctx)
	case "f":
		return b.failover(ctx)
	}
	return nil, fmt.Errorf("unknown workload %q", w)
}

// benchRun holds what the workloads share.
type benchRun struct {
	f       *benchFlags
	cl      *client.Client
	lc      *benchLocal // nil against a running cluster
	log     io.Writer
	prog    *bench.Progress
	payload []byte
	runID   string

	lat      map[string]*bench.Histogram // a, b, c latencies for the plot
	failTL   *bench.Timeline
	failMark []bench.Marker

	replay replayState // d and e
}

func (b *benchRun) config() map[string]any {
	cfg := map[string]any{
		"event_bytes": b.f.size, "duration_s": b.f.duration.Seconds(), "producers": b.f.producers,
		"replay_log_events": b.f.events, "stream_events": b.f.streamEvents,
		"c_max_batch_events": b.f.batch, "c_inflight": b.f.inflight, "c_window": b.f.window, "failovers": b.f.failovers,
		"append_transport": map[bool]string{false: "AppendStream", true: "unary Append"}[b.f.unaryAppend],
		"fsync":            "raft-wal fsyncs every Raft log write (one fsync per append batch) on a majority before an append is acknowledged",
	}
	if b.lc != nil {
		cfg["cluster"] = "3 local tsstore processes on 127.0.0.1, one disk, sharing the cores with this client"
		cfg["raft_defaults"] = b.lc.raftTiming
		if len(b.f.serveArgs) > 0 {
			cfg["serve_args"] = strings.Join(b.f.serveArgs, " ")
		}
		if b.f.workloads["x"] {
			cfg["x_hostile"] = b.f.hostile.config()
		}
		if b.f.workloads["k"] {
			cfg["k_serve_args"] = strings.Join(compactServeArgs, " ") + " (every node, for every workload of this bench)"
		} else if b.f.workloads["t"] {
			cfg["t_serve_args"] = strings.Join(tierServeArgs, " ") + " (every node, for every workload of this bench)"
		}
		if b.f.workloads["t"] {
			cfg["t_events"], cfg["t_cache_bytes"] = b.f.tier.events, b.f.tier.cacheBytes
			if len(b.f.tier.tierArgs) > 0 {
				cfg["t_tier_args"] = strings.Join(b.f.tier.tierArgs, " ")
			}
		}
		if b.lc.sec != nil {
			cfg["security"] = "TLS between nodes and for clients, bearer tokens (this client: an append token)"
		}
	} else {
		cfg["cluster"] = "running cluster at " + b.f.addrs
	}
	return cfg
}

func (b *benchRun) event(stream string) client.Event {
	return client.Event{Stream: stream, Type: "BatchCompleted", Payload: b.payload}
}

func (b *benchRun) writePlots() error {
	if b.f.plots == "" {
		return nil
	}
	var names []string
	var hs []*bench.Histogram
	for _, w := range []string{"a", "b", "c"} {
		if h := b.lat[w]; h != nil && h.Count() > 0 {
			names, hs = append(names, w+" ("+benchNames[w]+")"), append(hs, h)
		}
	}
	var errs []error
	if len(hs) > 0 {
		p := filepath.Join(b.f.plots, "latency.png")
		errs = append(errs, bench.PlotLatencyCDF(p, "tsstore append latency (acknowledged after a majority fsync)", names, hs))
		fmt.Fprintf(b.log, "bench: wrote %s\n", p)
	}
	if b.failTL != nil {
		p := filepath.Join(b.f.plots, "failover.png")
		errs = append(errs, bench.PlotTimeline(p, fmt.Sprintf("tsstore throughput through leader kills (%d waiting producers)", b.f.producers), b.failTL, b.failMark...))
		fmt.Fprintf(b.log, "bench: wrote %s\n", p)
	}
	return errors.Join(errs...)
}

var benchNames = map[string]string{"a": "1 waiting", "b": "N waiting", "c": "batching"}

// benchLocal is the local three-node cluster of real processes.
type benchLocal struct {
	c          *proccluster.Cluster
	dir        string
	temp       bool
	metrics    []string // metrics address per node
	raftTiming map[string]string
	sec        *benchSecurity // with --secure
}

func startBenchLocal(ctx context.Context, f *benchFlags, log io.Writer) (*benchLocal, error) {
	lc := &benchLocal{dir: f.local}
	if lc.dir == "" {
		d, err := os.MkdirTemp("", "tsstore-bench-")
		if err != nil {
			return nil, err
		}
		lc.dir, lc.temp = d, true
	}
	lc.dir, _ = filepath.Abs(lc.dir)
	bin, err := os.Executable()
	if err != nil {
		return nil, err
	}
	extra := []string{"--log-level", "warn"}
	if f.workloads["k"] {
		extra = append(extra, compactServeArgs...) // --serve-args, after them, may override
	} else if f.workloads["t"] {
		extra = append(extra, tierServeArgs...)
	}
	opts := proccluster.Options{Binary: bin, Dir: lc.dir, ExtraArgs: append(extra, f.serveArgs...)}
	if f.profile != "" {
		opts.Env = []string{pprofEnv + "=127.0.0.1:0"}
	}
	if f.secure {
		if lc.sec, err = newBenchSecurity(filepath.Join(lc.dir, "pki"), f.hostile.bigRate); err != nil {
			if lc.temp {
				os.RemoveAll(lc.dir)
			}
			return nil, err
		}
		opts.ExtraArgs = append(opts.ExtraArgs, "--peer-tls-ca", lc.sec.caFile, "--auth-tokens-file", lc.sec.tokensFile)
		opts.DialOptions = lc.sec.dialOptions(lc.sec.readToken)
	}
	if lc.c, err = proccluster.New(opts); err != nil {
		return nil, err
	}
	if lc.sec != nil {
		if err := lc.sec.issueNodeCerts(lc.c); err != nil {
			lc.close(false)
			return nil, err
		}
	}
	ports, err := proccluster.FreePorts("127.0.0.1", len(lc.c.Nodes))
	if err != nil {
		return nil, err
	}
	for i, n := range lc.c.Nodes {
		a := fmt.Sprintf("127.0.0.1:%d", ports[i])
		lc.metrics = append(lc.metrics, a)
		n.AddArgs("--metrics-addr", a)
	}
	if err := lc.c.Start(); err != nil {
		lc.close(false)
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := lc.c.WaitLeader(wctx); err != nil {
		lc.c.TailLogs(log, 20)
		lc.close(false)
		return nil, err
	}
	lc.raftTiming = serverRaftTiming()
	fmt.Fprintf(log, "bench: local cluster under %s\n", lc.dir)
	return lc, nil
}

func (lc *benchLocal) close(keep bool) {
	lc.c.Close()
	if lc.temp && !keep {
		os.RemoveAll(lc.dir)
	}
}

// leader returns the index of the leader node.
func (lc *benchLocal) leader(ctx context.Context) (int, error) {
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	n, err := lc.c.WaitLeader(wctx)
	if err != nil {
		return 0, err
	}
	return slices.Index(lc.c.Nodes, n), nil
}

// signalContext is cancelled by Ctrl-C, SIGTERM or SIGHUP (a closed
// terminal), so the local cluster is stopped and its temp dir removed.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
}

// serverRaftTiming is the Raft timing the local cluster's nodes run with
// unless --serve-args overrides it (the server defaults).
func serverRaftTiming() map[string]string {
	c := server.DefaultConfig()
	return map[string]string{"heartbeat_timeout": c.HeartbeatTimeout.String(), "election_timeout": c.ElectionTimeout.String(),
		"leader_lease_timeout": c.LeaderLeaseTimeout.String(), "commit_timeout": c.CommitTimeout.String()}
}

// cpuTime is CPU time (user + system) used so far by the local cluster's
// running nodes and by this process. The figures per event show where a
// workload's cost goes even when the machine is shared and wall-clock
// rates are noisy.
type cpuTime struct{ nodes, client time.Duration }

func (b *benchRun) cpu() cpuTime {
	var t cpuTime
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		t.client = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	if b.lc == nil {
		return t
	}
	for _, n := range b.lc.c.Nodes {
		if pid := n.PID(); pid != 0 {
			t.nodes += procCPU(pid)
		}
	}
	return t
}

// procCPU reads utime + stime of a process from /proc (Linux).
func procCPU(pid int) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the parenthesised command name; utime and stime are
	// fields 14 and 15 of the whole line, in clock ticks (USER_HZ, 100).
	s := string(raw)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0
	}
	var ut, st int64
	fmt.Sscan(f[11], &ut)
	fmt.Sscan(f[12], &st)
	return time.Duration(ut+st) * (time.Second / 100)
}

// cpuNote says how much CPU the workload used per event since `since`.
func (b *benchRun) cpuNote(since cpuTime, events int64) string {
	if events == 0 {
		return ""
	}
	now := b.cpu()
	per := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(events) }
	if b.lc == nil {
		return fmt.Sprintf("CPU per event: client %.1f µs", per(now.client-since.client))
	}
	return fmt.Sprintf("CPU per event: 3 nodes %.1f µs, client %.1f µs", per(now.nodes-since.nodes), per(now.client-since.client))
}
