package jepsen

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/tsstore/tsstore/internal/proccluster"
)

// Config is one scenario run.
type Config struct {
	Scenario Scenario
	Seed     uint64
	// Duration is the workload time: warm-up, faults, cool-down.
	Duration time.Duration
	// Binary is the tsstore executable; FaultFSBinary the one built with
	// -tags faultfs (used by scenarios with FaultFS).
	Binary, FaultFSBinary string
	// Dir receives results.json, history.jsonl and, while running, the
	// cluster's data; the data is removed after a valid run unless Keep.
	Dir  string
	Keep bool
	Log  io.Writer
}

// Result is what a run found; it is written to results.json.
type Result struct {
	Scenario string              `json:"scenario"`
	Doc      string              `json:"doc"`
	Seed     uint64              `json:"seed"`
	Duration time.Duration       `json:"duration_ns"`
	Valid    bool                `json:"valid"`
	Error    string              `json:"error,omitempty"` // the run could not complete its checks
	Schedule []PlannedFault      `json:"schedule"`
	Faults   []Fault             `json:"faults"`
	ByType   map[string]int      `json:"faults_by_type"`
	Appends  AppendStats         `json:"appends"`
	Reads    ReadStats           `json:"reads"`
	Phases   []PhaseStats        `json:"phases"`
	Longest  Window              `json:"longest_unavailability"`
	Heals    []HealRecovery      `json:"heal_to_first_ok_append"`
	Leaders  []LeaderObservation `json:"leaders"`
	Changes  int                 `json:"leader_changes"`
	Replicas []Replica           `json:"replicas"`
	Checks   []CheckResult       `json:"checks"`
	Dir      string              `json:"dir"`
}

// scenarioSeed mixes the run seed with the scenario name, so each
// scenario of one seed gets its own schedule.
func scenarioSeed(seed uint64, name string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	return seed ^ h.Sum64()
}

// Run runs one scenario end to end and writes its results. It stops by
// itself: every phase is bounded, and whatever happens, every process it
// started is killed before it returns.
func Run(ctx context.Context, cfg Config) (res *Result, err error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration+4*time.Minute)
	defer cancel()
	s := cfg.Scenario
	res = &Result{Scenario: s.Name, Doc: s.Doc, Seed: cfg.Seed, Duration: cfg.Duration, Dir: cfg.Dir}
	logf := func(format string, args ...any) { fmt.Fprintf(cfg.Log, format+"\n", args...) }
	dataDir := filepath.Join(cfg.Dir, "cluster")
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		return res, err
	}
	bin := cfg.Binary
	if s.FaultFS {
		bin = cfg.FaultFSBinary
	}
	seed := scenarioSeed(cfg.Seed, s.Name)
	env := []string{fmt.Sprintf("FAULTFS_SEED=%d", seed)}
	serveArgs := s.ServeArgs
	var disks *nodeDisks
	var prepare func([]*proccluster.Node) error
	if s.Disk != nil {
		serveArgs = append(slices.Clone(serveArgs), s.Disk.serveArgs()...)
		prepare = func(nodes []*proccluster.Node) (err error) {
			disks, err = mountDisks(nodes, s.Disk)
			return err
		}
		// Unmounts if the cluster does not start; after a run the
		// deferred function below does it, copying the data out first
		// when it keeps it.
		defer func() { disks.release(false) }()
	}
	var ts *tieringSetup
	if s.Tiering != nil {
		// versitygw and its proxy start before the nodes (their
		// arguments name the proxy) and stop after them.
		ts = &tieringSetup{}
		serveArgs = append(slices.Clone(serveArgs), tieringArgs...)
		env = append(env, storeEnv()...)
		prepare = ts.prepare(ctx, filepath.Join(cfg.Dir, "store"), seed)
		defer func() { ts.store.close() }()
	}
	c, err := startCluster(ctx, bin, dataDir, serveArgs, env, prepare)
	if err != nil {
		return res, fmt.Errorf("starting cluster: %w", err)
	}
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v", p)
		}
		c.close()
		keep := err != nil || !res.Valid || cfg.Keep
		if derr := disks.release(keep); derr != nil {
			logf("  releasing the nodes' filesystems: %v", derr)
		}
		if !keep {
			os.RemoveAll(dataDir)
		} else {
			logf("  cluster data and node logs kept in %s", dataDir)
		}
	}()
	rec := newRecorder()
	h, reps, err := execute(ctx, cfg, c, ts, rec, seed, res, logf)
	res.Replicas = reps
	summarize(res, h, cfg.Duration)
	if err != nil {
		res.Error = err.Error()
	}
	res.Checks = Check(h, reps)
	res.Valid = err == nil && Valid(res.Checks)
	if h.Tiering != nil {
		if b, jerr := json.MarshalIndent(h.Tiering, "", "  "); jerr == nil {
			os.WriteFile(filepath.Join(cfg.Dir, "tiering.json"), append(b, '\n'), 0o644)
		}
	}
	if werr := writeResults(cfg.Dir, res, h); werr != nil && err == nil {
		err = werr
	}
	return res, err
}

// phases splits the workload time into warm-up, faults and cool-down.
func phases(d time.Duration) (faultsFrom, faultsTo time.Duration) {
	warm := max(d/8, 4*time.Second)
	cool := max(d/6, 5*time.Second)
	return warm, d - cool
}

// execute runs the workload and the nemesis, heals, and replays every
// replica. The history is complete even when it returns an error.
func execute(ctx context.Context, cfg Config, c *cluster, ts *tieringSetup, rec *recorder, seed uint64, res *Result,
	logf func(string, ...any)) (*History, []Replica, error) {
	rng := rand.New(rand.NewPCG(seed, 1))
	from, to := phases(cfg.Duration)
	res.Schedule = planFaults(rng, cfg.Scenario, from, to)
	logf("== %s (seed %d): %d faults planned between %v and %v", cfg.Scenario.Name, cfg.Seed, len(res.Schedule), from, to)

	mctx, stopMonitor := context.WithCancel(ctx)
	mon := &monitor{}
	monDone := make(chan struct{})
	go func() { defer close(monDone); mon.run(mctx, c, rec) }()
	defer func() { stopMonitor(); <-monDone; res.Leaders = mon.observations() }()

	stop, stopWorkload := context.WithCancel(ctx)
	defer stopWorkload()
	w := &workload{c: c, rec: rec, seed: seed, runID: fmt.Sprintf("%x", seed), fencing: cfg.Scenario.Fencing,
		retention: cfg.Scenario.Retention, compaction: cfg.Scenario.Compaction, duration: cfg.Duration}
	if cs := cfg.Scenario.Compaction; cs != nil {
		rec.h.Compaction = &CompactionRun{Keep: cs.Keep}
	}
	if r := cfg.Scenario.Retention; r != nil {
		v, err := setRetention(ctx, c, r.Prefix, r.MaxBytes, false)
		if err != nil {
			return rec.snapshot(), nil, err
		}
		rec.setRetention(&RetentionRun{Prefix: r.Prefix, MaxBytes: r.MaxBytes, Uncovered: r.Uncovered, Version: v, SetAt: rec.now()})
		logf("  retention policy %q max-bytes %d set (policy version %d)", r.Prefix, r.MaxBytes, v)
	}
	if cfg.Scenario.Tiering != nil {
		rec.h.Tiering = &TieringRun{}
	}
	w.start(ctx, stop)
	nem := &nemesis{c: c, rec: rec, rng: rng, logf: logf, disk: cfg.Scenario.Disk, fillers: map[string]bool{}}
	nctx, stopNemesis := context.WithTimeout(ctx, to+10*time.Second)
	plan := res.Schedule // the store nemesis's faults are its own
	waitStore, stopPoller := func() {}, func() {}
	if ts != nil {
		waitStore, stopPoller = runTiering(ctx, nctx, cfg, c, ts, rec, seed, from, to, res, logf)
		defer stopPoller()
	}
	nem.run(nctx, plan)
	waitStore()
	stopNemesis()
	sleepCtx(ctx, cfg.Duration-rec.now())
	stopWorkload()
	w.wait()
	nem.healAll()
	var reps []Replica
	var err error
	if ts != nil {
		reps, err = finalTiering(ctx, c, rec, w.runID, stopPoller)
		p := ts.store.proxy
		rec.tiering(func(t *TieringRun) {
			t.ProxyRequests, t.ProxyInjected, t.ProxyDown = p.requests.Load(), p.injected.Load(), p.failed.Load()
		})
	} else {
		reps, err = finalPhase(ctx, c, rec, w.runID, cfg.Scenario.Retention, cfg.Scenario.Compaction != nil)
	}
	if len(nem.failures) > 0 {
		err = errors.Join(err, fmt.Errorf("nemesis: %s", strings.Join(nem.failures, "; ")))
	}
	return rec.snapshot(), reps, err
}

// summarize fills the result's statistics from the history.
func summarize(res *Result, h *History, d time.Duration) {
	from, to := phases(d)
	res.Faults = h.Faults
	res.ByType = map[string]int{}
	faultsEnd := to
	for _, f := range h.Faults {
		res.ByType[f.Kind]++
		faultsEnd = max(faultsEnd, f.End)
	}
	res.Appends = appendStats(h)
	res.Reads = readStats(h)
	res.Phases = []PhaseStats{
		phaseStats(h, "before", 0, from),
		phaseStats(h, "during", from, faultsEnd),
		phaseStats(h, "after", faultsEnd, d),
	}
	res.Changes = leaderChanges(res.Leaders)
	res.Longest = longestUnavailable(h, from, d)
	res.Heals = healRecoveries(h)
}

func writeResults(dir string, res *Result, h *History) error {
	if err := writeHistory(filepath.Join(dir, "history.jsonl"), h); err != nil {
		return err
	}
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "results.json"), append(b, '\n'), 0o644)
}

// leaderChanges counts the leaders seen after the first one.
func leaderChanges(obs []LeaderObservation) int { return max(len(obs)-1, 0) }

// Summary renders a result as a few human-readable lines.
func (r *Result) Summary() string {
	var b strings.Builder
	verdict := "PASS"
	if !r.Valid {
		verdict = "FAIL"
	}
	fmt.Fprintf(&b, "%s %s seed=%d faults=%d leaders=%d\n", verdict, r.Scenario, r.Seed, len(r.Faults), r.Changes)
	a := r.Appends
	fmt.Fprintf(&b, "  appends attempted=%d ok=%d failed=%d (fenced %d, disk full %d) unknown=%d recovered=%d retries=%d events=%d\n",
		a.Attempted, a.OK, a.Failed, a.Fenced, a.DiskFull, a.Unknown, a.Recovered, a.Retries, a.Events)
	rd := r.Reads
	fmt.Fprintf(&b, "  reads ok=%d/%d linearizable=%d ryw=%d events=%d; subscriptions delivered=%d resumes=%d emulated=%v\n",
		rd.ReadsOK, rd.Reads, rd.Linearizable, rd.ReadYourWrites, rd.EventsRead, rd.Delivered, rd.Resumes, rd.Emulated)
	for _, p := range r.Phases {
		fmt.Fprintf(&b, "  %-6s %6.0f ok/s p50=%v p99=%v\n", p.Phase, p.PerSecond, p.P50.Round(time.Microsecond*100), p.P99.Round(time.Millisecond))
	}
	fmt.Fprintf(&b, "  longest unavailability %v (at %v); heal->first ok append max %v\n",
		r.Longest.Len().Round(time.Millisecond), r.Longest.From.Round(time.Millisecond), maxHeal(r.Heals).Round(time.Millisecond))
	for _, rep := range r.Replicas {
		fmt.Fprintf(&b, "  replica %s: %d events sha256 %.16s %s\n", rep.Node, rep.Length, rep.Hash, rep.Err)
	}
	for _, c := range r.Checks {
		fmt.Fprintf(&b, "  check %d %-48s checked=%-7d violations=%d %v\n", c.Rule, c.Name, c.Checked, c.Violations, c.Notes)
		for _, e := range c.Examples {
			fmt.Fprintf(&b, "      %s\n", e)
		}
	}
	if r.Error != "" {
		fmt.Fprintf(&b, "  error: %s\n", r.Error)
	}
	return b.String()
}

func maxHeal(hs []HealRecovery) time.Duration {
	var m time.Duration
	for _, h := range hs {
		m = max(m, h.After)
	}
	return m
}
