package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// failover runs f the way `tsstore bench` does (cmd/tsstore/bench_failover.go),
// so the figures compare: the b load (producers waiting producers) runs
// while the write leader is SIGKILLed kills times. Each kill follows
// max(2 s, duration/2) of steady load; after it the run waits for the
// first acknowledged append, keeps the load on for another max(2 s,
// duration/2), restarts the killed process with its own command line and
// lets it catch up for 2 s.
//
// Per kill: first_ack_ms is from the SIGKILL to the first append
// acknowledged after it; recovered_ms is to the start of the first 500 ms
// window whose rate is back to 90% of the rate in the second before the
// kill. The row carries the medians.
func failover(ctx context.Context, sys system, cfg runConfig, payload []byte) (Result, error) {
	steady := max(2*time.Second, cfg.duration/2)
	type killRec struct {
		node      node
		at        time.Time
		firstAck  time.Duration
		inFlight  time.Duration // earlier ack of an append sent before the kill, if any
		restarted time.Duration
	}
	var (
		kills   []killRec
		mu      sync.Mutex
		acks    []time.Time // every acknowledgement, from all producers
		lats    []time.Duration
		errs    int
		curKill time.Time // the latest kill
		first   time.Time // the first ack after curKill of an append sent after it
		firstIn time.Time // the first ack after curKill of an append in flight at the kill
	)
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	start := time.Now()
	for p := range cfg.producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stream := fmt.Sprintf("f%d", p)
			for rctx.Err() == nil {
				t0 := time.Now()
				err := sys.Append(rctx, stream, payload)
				now := time.Now()
				mu.Lock()
				if err == nil {
					acks = append(acks, now)
					lats = append(lats, now.Sub(t0))
					if !curKill.IsZero() && now.After(curKill) {
						if t0.After(curKill) && first.IsZero() {
							first = now
						} else if !t0.After(curKill) && firstIn.IsZero() {
							firstIn = now
						}
					}
				} else if rctx.Err() == nil {
					errs++
				}
				mu.Unlock()
				if err != nil && rctx.Err() == nil {
					time.Sleep(5 * time.Millisecond)
				}
			}
		}()
	}
	var runErr error
	for i := 0; i < cfg.kills && runErr == nil; i++ {
		if sleepCtx(ctx, steady) != nil {
			break
		}
		k, err := killLeader(ctx, sys, cfg, func(at time.Time) {
			mu.Lock()
			curKill, first, firstIn = at, time.Time{}, time.Time{}
			mu.Unlock()
		})
		if err != nil {
			runErr = err
			break
		}
		for ctx.Err() == nil {
			mu.Lock()
			f, fi := first, firstIn
			mu.Unlock()
			if !f.IsZero() {
				k.firstAck = f.Sub(k.at)
				if !fi.IsZero() && fi.Before(f) {
					k.inFlight = fi.Sub(k.at)
				}
				break
			}
			if time.Since(k.at) > 2*time.Minute {
				runErr = fmt.Errorf("failover: no acknowledgement 2 min after killing %s", k.node.name)
				break
			}
			time.Sleep(time.Millisecond)
		}
		if runErr != nil {
			break
		}
		if sleepCtx(ctx, steady) != nil {
			break
		}
		pid, err := restart(k.node, cfg.pidFile)
		if err != nil {
			runErr = err
			break
		}
		for j := range cfg.nodes {
			if cfg.nodes[j].name == k.node.name {
				cfg.nodes[j].pid = pid
			}
		}
		kills = append(kills, killRec{node: k.node, at: k.at, firstAck: k.firstAck, inFlight: k.inFlight, restarted: time.Since(k.at)})
		sleepCtx(ctx, 2*time.Second)
	}
	stop()
	wg.Wait()
	el := time.Since(start)
	if runErr != nil {
		return Result{}, runErr
	}
	if len(kills) == 0 {
		return Result{}, fmt.Errorf("failover: no kill completed")
	}
	slices.SortFunc(acks, func(a, b time.Time) int { return a.Compare(b) })
	var firsts, recs []float64
	var notes []string
	for _, k := range kills {
		firsts = append(firsts, ms(k.firstAck))
		rec, ok := recovery(acks, k.at)
		txt := "not recovered"
		if ok {
			recs = append(recs, ms(rec))
			txt = fmt.Sprintf("recovered %.0f ms", ms(rec))
		}
		in := ""
		if k.inFlight > 0 {
			in = fmt.Sprintf(" (an append in flight at the kill was acked at %.0f ms)", ms(k.inFlight))
		}
		notes = append(notes, fmt.Sprintf("%s: first ack %.0f ms%s, %s", k.node.name, ms(k.firstAck), in, txt))
	}
	r := throughput("f", fmt.Sprintf("failover, %d producers, waiting", cfg.producers), len(acks), cfg.size, el).withLatency(lats)
	r.Note = fmt.Sprintf("%d kills (SIGKILL of the %s), medians reported; first ack = of an append sent after the kill; %s; %d appends failed and were retried (op timeout %s)",
		len(kills), sys.LeaderKind(), strings.Join(notes, "; "), errs, cfg.opTimeout)
	r.FirstAckMs = ptr(median(firsts))
	if len(recs) > 0 {
		r.RecoveredMs = ptr(median(recs))
	}
	return r, nil
}

type killed struct {
	node     node
	at       time.Time
	firstAck time.Duration
	inFlight time.Duration
}

// killLeader SIGKILLs the current write leader and waits until its
// process is gone (exited or a zombie).
func killLeader(ctx context.Context, sys system, cfg runConfig, mark func(time.Time)) (killed, error) {
	// Right after a restart the cluster may still be settling.
	var name string
	var err error
	for deadline := time.Now().Add(time.Minute); ; {
		if name, err = sys.Leader(ctx); err == nil || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return killed{}, fmt.Errorf("leader: %w", err)
	}
	var n node
	for _, c := range cfg.nodes {
		if c.name == name {
			n = c
		}
	}
	if n.name == "" {
		return killed{}, fmt.Errorf("leader %q is not among --nodes", name)
	}
	// Read the command line before the process is gone.
	n.cmdline, n.cwd, n.logPath = procInfo(n.pid)
	if len(n.cmdline) == 0 {
		return killed{}, fmt.Errorf("no command line for %s (pid %d)", n.name, n.pid)
	}
	at := time.Now()
	mark(at)
	if err := syscall.Kill(n.pid, syscall.SIGKILL); err != nil {
		return killed{}, fmt.Errorf("kill %s (pid %d): %w", n.name, n.pid, err)
	}
	for i := 0; i < 1000 && alive(n.pid); i++ {
		time.Sleep(time.Millisecond)
	}
	fmt.Fprintf(cfg.log, "peerbench: f: killed %s (pid %d)\n", n.name, n.pid)
	return killed{node: n, at: at}, nil
}

func procInfo(pid int) (cmd []string, cwd, logPath string) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil, "", ""
	}
	cmd = strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	cwd, _ = os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
	logPath, _ = os.Readlink(fmt.Sprintf("/proc/%d/fd/2", pid))
	return cmd, cwd, logPath
}

// alive says whether pid runs: not gone and not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// restarted are the processes restart started; stopRestarted ends them.
var restarted []*exec.Cmd

// stopRestarted sends SIGTERM to the restarted nodes, then SIGKILL after
// 10 s, and reaps them: peerbench is their parent.
func stopRestarted() {
	for _, c := range restarted {
		c.Process.Signal(syscall.SIGTERM)
	}
	for _, c := range restarted {
		done := make(chan struct{})
		go func() { c.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			c.Process.Kill()
			<-done
		}
	}
	restarted = nil
}

// restart starts the killed node again with its command line, working
// directory and log file, and records the new PID in pidFile so that
// run.sh stops it should peerbench not get to (stopRestarted).
func restart(n node, pidFile string) (int, error) {
	cmd := exec.Command(n.cmdline[0], n.cmdline[1:]...)
	cmd.Dir = n.cwd
	if strings.HasPrefix(n.logPath, "/") {
		if f, err := os.OpenFile(n.logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644); err == nil {
			cmd.Stdout, cmd.Stderr = f, f
			defer f.Close()
		}
	}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("restart %s: %w", n.name, err)
	}
	pid := cmd.Process.Pid
	restarted = append(restarted, cmd)
	if pidFile != "" {
		f, err := os.OpenFile(pidFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return pid, err
		}
		fmt.Fprintln(f, pid)
		f.Close()
	}
	return pid, nil
}

// recovery returns the time from the kill to the start of the first 500
// ms window after it whose rate is at least 90% of the rate in the second
// before the kill; acks is sorted.
func recovery(acks []time.Time, kill time.Time) (time.Duration, bool) {
	count := func(from, to time.Time) int {
		i, _ := slices.BinarySearchFunc(acks, from, func(a, t time.Time) int { return a.Compare(t) })
		j, _ := slices.BinarySearchFunc(acks, to, func(a, t time.Time) int { return a.Compare(t) })
		return j - i
	}
	before := float64(count(kill.Add(-time.Second), kill))
	if before == 0 || len(acks) == 0 {
		return 0, false
	}
	const win = 500 * time.Millisecond
	end := acks[len(acks)-1]
	for t := kill; !t.Add(win).After(end); t = t.Add(10 * time.Millisecond) {
		if float64(count(t, t.Add(win)))/win.Seconds() >= 0.9*before {
			return t.Sub(kill), true
		}
	}
	return 0, false
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
