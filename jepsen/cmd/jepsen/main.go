// Command jepsen runs the fault-injection scenarios of package jepsen
// against real tsstore processes on loopback and checks the histories.
//
//	go run ./jepsen/cmd/jepsen -scenario all -profile short
//	go run ./jepsen/cmd/jepsen -scenario partition,crash -seed 42 -duration 2m
//
// It builds the tsstore binary (and a -tags faultfs variant), runs each
// scenario on a fresh three-node cluster, prints a summary per scenario
// and a table, and writes results.json and history.jsonl per scenario
// under -out. It exits 1 if any scenario found a violation or could not
// complete its checks.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/tsstore/tsstore/internal/proccluster"
	"github.com/tsstore/tsstore/jepsen"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "jepsen:", err)
		os.Exit(1)
	}
}

func run(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("jepsen", flag.ContinueOnError)
	scenario := fs.String("scenario", "all", "scenario name, comma-separated names, or all ("+jepsen.ScenarioNames()+")")
	profile := fs.String("profile", "short", "short (35s per scenario, CI) or long (5m per scenario)")
	duration := fs.Duration("duration", 0, "workload time per scenario; overrides the profile")
	seed := fs.Uint64("seed", 0, "seed of the fault schedules and workloads (0: from the clock)")
	outDir := fs.String("out", "", "results directory (default: a new temporary directory)")
	keep := fs.Bool("keep", false, "keep cluster data directories of valid runs too")
	list := fs.Bool("list", false, "list the scenarios and exit")
	src := fs.String("src", "", "build tsstore from this module directory (default: the current module)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *list {
		for _, s := range jepsen.Scenarios {
			fmt.Fprintf(out, "%-12s %s\n", s.Name, s.Doc)
		}
		return nil
	}
	scens, err := jepsen.FindScenarios(*scenario)
	if err != nil {
		return err
	}
	prof, ok := jepsen.Profiles[*profile]
	if !ok {
		return fmt.Errorf("unknown profile %q (short or long)", *profile)
	}
	if *duration > 0 {
		prof.Duration = *duration
	}
	if *seed == 0 {
		*seed = uint64(time.Now().UnixNano() % 1_000_000_007)
	}
	if *outDir == "" {
		if *outDir, err = os.MkdirTemp("", "tsstore-jepsen-"); err != nil {
			return err
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	bin, ffBin, cleanup, err := build(*src)
	if err != nil {
		return err
	}
	defer cleanup()
	fmt.Fprintf(out, "jepsen: seed %d, profile %s (%v per scenario), results in %s\n", *seed, prof.Name, prof.Duration, *outDir)
	var results []*jepsen.Result
	failed := 0
	for _, s := range scens {
		res, err := jepsen.Run(ctx, jepsen.Config{Scenario: s, Seed: *seed, Duration: prof.Duration,
			Binary: bin, FaultFSBinary: ffBin, Dir: filepath.Join(*outDir, s.Name), Keep: *keep, Log: out})
		if err != nil && res.Error == "" {
			res.Error = err.Error()
		}
		if !res.Valid || res.Error != "" {
			failed++
		}
		fmt.Fprint(out, res.Summary())
		results = append(results, res)
		if ctx.Err() != nil {
			break
		}
	}
	fmt.Fprint(out, table(results))
	if b, err := json.MarshalIndent(results, "", "  "); err == nil {
		os.WriteFile(filepath.Join(*outDir, "summary.json"), b, 0o644)
	}
	fmt.Fprintf(out, "jepsen: results in %s\n", *outDir)
	if failed > 0 {
		return fmt.Errorf("%d of %d scenarios failed (seed %d)", failed, len(results), *seed)
	}
	return nil
}

// build compiles tsstore twice into a temporary directory: plain and with
// -tags faultfs. Never with -race: the harness measures the real thing.
func build(root string) (bin, ffBin string, cleanup func(), err error) {
	if root == "" {
		if root, err = moduleRoot(); err != nil {
			return "", "", nil, err
		}
	}
	dir, err := os.MkdirTemp("", "tsstore-jepsen-bin-")
	if err != nil {
		return "", "", nil, err
	}
	cleanup = func() { os.RemoveAll(dir) }
	if bin, err = proccluster.Build(root, dir); err == nil {
		ffDir := filepath.Join(dir, "faultfs")
		if err = os.MkdirAll(ffDir, 0o755); err == nil {
			ffBin, err = proccluster.Build(root, ffDir, "-tags", "faultfs")
		}
	}
	if err != nil {
		cleanup()
		return "", "", nil, err
	}
	return bin, ffBin, cleanup, nil
}

// moduleRoot is the directory of the main module's go.mod.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("run from inside the tsstore module")
	}
	return filepath.Dir(mod), nil
}

// table renders one line per scenario.
func table(rs []*jepsen.Result) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\n| scenario | verdict | faults | appends ok/fail/unknown (recovered) | reads ok | sub deliveries | leader changes | longest unavail. | max heal->ok | ok/s before/during/after | p99 before/during/after | violations |\n")
	fmt.Fprintf(&b, "|---|---|---:|---|---:|---:|---:|---:|---:|---|---|---:|\n")
	for _, r := range rs {
		verdict := "pass"
		if !r.Valid {
			verdict = "FAIL"
		}
		v := 0
		for _, c := range r.Checks {
			v += c.Violations
		}
		var ps, p99 []string
		for _, p := range r.Phases {
			ps = append(ps, fmt.Sprintf("%.0f", p.PerSecond))
			p99 = append(p99, p.P99.Round(time.Millisecond).String())
		}
		var heal time.Duration
		for _, h := range r.Heals {
			heal = max(heal, h.After)
		}
		fmt.Fprintf(&b, "| %s | %s | %d | %d/%d/%d (%d) | %d | %d | %d | %v | %v | %s | %s | %d |\n",
			r.Scenario, verdict, len(r.Faults), r.Appends.OK, r.Appends.Failed, r.Appends.Unknown, r.Appends.Recovered,
			r.Reads.ReadsOK, r.Reads.Delivered, r.Changes, r.Longest.Len().Round(time.Millisecond), heal.Round(time.Millisecond),
			strings.Join(ps, "/"), strings.Join(p99, "/"), v)
	}
	return b.String()
}
