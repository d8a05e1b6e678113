package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/tsstore/tsstore/client"
	"github.com/tsstore/tsstore/internal/proccluster"
)

func newDevCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dev [--dir DIR] [--base-port P] [--epochs N] [--batches N] [--ranks N] [--exit]",
		Short: "run a local three-node cluster and a demo trainer",
		Args:  noArgs,
	}
	var f devFlags
	fs := cmd.Flags()
	fs.StringVar(&f.dir, "dir", "tsstore-dev", "directory for the three nodes' data and logs")
	fs.IntVar(&f.basePort, "base-port", 7101, "node i uses raft port base+i and API port base+100+i (0: free ports)")
	fs.IntVar(&f.epochs, "epochs", 3, "epochs the demo trainer runs")
	fs.IntVar(&f.steps, "batches", 200, "batches (optimizer steps) per epoch")
	fs.IntVar(&f.ranks, "ranks", 8, "ranks (data-parallel workers) of the demo job")
	fs.IntVar(&f.every, "checkpoint-every", 50, "steps between checkpoints")
	fs.IntVar(&f.snapEvery, "run-snapshot-batches", 200, "the nodes snapshot the run every this many BatchCompleted events")
	fs.BoolVar(&f.failover, "failover", true, "kill the leader with SIGKILL when a rank fails, and restart it")
	fs.BoolVar(&f.exit, "exit", false, "stop the cluster after the demo instead of serving until Ctrl-C")
	cmd.RunE = func(cmd *cobra.Command, args []string) error { return runDev(cmd, &f) }
	return cmd
}

// devFlags are dev's settings.
type devFlags struct {
	dir                                              string
	basePort, epochs, steps, ranks, every, snapEvery int
	failover, exit                                   bool
}

func runDev(cmd *cobra.Command, f *devFlags) error {
	stdout, stderr := stdio(cmd)
	if f.epochs < 1 || f.steps < 4 || f.ranks < 2 || f.every < 1 || f.snapEvery < 1 {
		return fmt.Errorf("%w: want --epochs >= 1, --batches >= 4, --ranks >= 2, --checkpoint-every >= 1 and --run-snapshot-batches >= 1", errUsage)
	}
	bin, err := os.Executable()
	if err != nil {
		return err
	}
	abs, err := filepath.Abs(f.dir)
	if err != nil {
		return err
	}
	c, err := proccluster.New(proccluster.Options{Binary: bin, Dir: abs, BasePort: f.basePort,
		ExtraArgs: []string{"--log-format", "text", "--snapshot-threshold", "4096", "--snapshot-interval", "5s",
			"--run-snapshot-batches", fmt.Sprint(f.snapEvery)}})
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Start(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "started 3 nodes, data and logs under %s\n", abs)
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	leader, err := c.WaitLeader(wctx)
	wcancel()
	if err != nil {
		c.TailLogs(stderr, 20)
		return err
	}
	fmt.Fprintf(stdout, "leader is %s (api %s)\n\n", leader.ID, leader.APIAddr)

	cfg := client.DefaultConfig()
	cfg.Addrs = c.APIAddrs()
	cl, err := client.New(cfg)
	if err != nil {
		return err
	}
	defer cl.Close()
	tr := &trainer{cl: cl, out: stdout, run: fmt.Sprintf("run/demo-%d", time.Now().Unix()),
		ranks: f.ranks, epochs: f.epochs, steps: f.steps, every: f.every}
	if f.failover {
		tr.failure = func() error { return killLeader(ctx, c, stdout) }
	}
	if err := tr.train(ctx); err != nil {
		c.TailLogs(stderr, 20)
		return err
	}
	if err := verifyDemo(ctx, cl, cfg, tr.run, stdout); err != nil {
		return err
	}
	if f.exit {
		return nil
	}
	printTry(stdout, tr.run, f.steps, f.basePort, c.APIAddrs())
	<-ctx.Done()
	fmt.Fprintln(stdout, "stopping")
	for _, n := range c.Nodes {
		n.Stop(10 * time.Second)
	}
	return nil
}

// printTry suggests commands to try against the demo's cluster.
func printTry(out io.Writer, run string, steps, basePort int, addrs []string) {
	addr := "" // the CLI's default addresses are the default base port's
	if basePort != 7101 {
		addr = " --addr " + strings.Join(addrs, ",")
	}
	fmt.Fprintf(out, "\ncluster is serving; try:\n  tsstore status%[1]s\n  tsstore runs%[1]s\n  tsstore run show %[2]s%[1]s\n"+
		"  tsstore run state %[2]s --at-step %[3]d%[1]s\n  tsstore run checkpoints %[2]s%[1]s\n  tsstore run verify %[2]s%[1]s\n"+
		"  tsstore read --stream %[2]s --limit 20%[1]s\nCtrl-C stops all three nodes.\n", addr, run, steps)
}

// verifyDemo folds the run on every node and checks its snapshots, as
// `tsstore run verify` does.
func verifyDemo(ctx context.Context, cl *client.Client, cfg client.Config, run string, out io.Writer) error {
	fmt.Fprintln(out, "\nfolding the run from zero on each node (tsstore run verify):")
	vctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	rep, err := verifyRun(vctx, cl, cfg, run)
	if err != nil {
		return err
	}
	for _, n := range rep.Nodes {
		if n.Error != "" {
			fmt.Fprintf(out, "  %s: %s\n", n.ID, n.Error)
			continue
		}
		fmt.Fprintf(out, "  %s: %d events up to offset %d, hash %s\n", n.ID, n.Events, n.LastOffset, n.Hash)
	}
	equal := 0
	for _, s := range rep.Snapshots {
		if s.Result == "equal" {
			equal++
		}
	}
	fmt.Fprintf(out, "  %d of the run's %d indexed snapshots equal the fold from zero at the offset they cover\n", equal, len(rep.Snapshots))
	if !rep.Agree {
		return fmt.Errorf("run %s does not verify: %s", run, strings.Join(rep.Problems, "; "))
	}
	fmt.Fprintln(out, "all 3 replicas identical")
	return nil
}

// killLeader SIGKILLs the current leader, waits for a new one, and
// restarts the old leader so it catches up.
func killLeader(ctx context.Context, c *proccluster.Cluster, out io.Writer) error {
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	old, err := c.WaitLeader(wctx)
	if err != nil {
		return err
	}
	start := time.Now()
	if err := old.Kill(); err != nil {
		return err
	}
	fmt.Fprintf(out, "  !! killed leader %s (SIGKILL)\n", old.ID)
	nl, err := c.WaitLeader(wctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "  !! %s took over after %v; restarting %s\n", nl.ID, time.Since(start).Round(time.Millisecond), old.ID)
	return old.Start()
}
