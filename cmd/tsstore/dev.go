package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/tsstore/tsstore/client"
	"github.com/tsstore/tsstore/internal/proccluster"
)

func runDev(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("dev", stderr, "dev [--dir DIR] [--base-port P] [--batches N] [--exit]")
	dir := fs.String("dir", "tsstore-dev", "directory for the three nodes' data and logs")
	basePort := fs.Int("base-port", 7101, "node i uses raft port base+i and API port base+100+i")
	epochs := fs.Int("epochs", 3, "epochs the demo trainer runs")
	batches := fs.Int("batches", 200, "batches per epoch")
	failover := fs.Bool("failover", true, "kill the leader with SIGKILL after the first epoch, and restart it")
	exit := fs.Bool("exit", false, "stop the cluster after the demo instead of serving until Ctrl-C")
	if err := fs.Parse(args); err != nil {
		return err
	}
	bin, err := os.Executable()
	if err != nil {
		return err
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}
	c, err := proccluster.New(proccluster.Options{Binary: bin, Dir: abs, BasePort: *basePort,
		ExtraArgs: []string{"--log-format", "text", "--snapshot-threshold", "4096", "--snapshot-interval", "5s"}})
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
		epochs: *epochs, batches: *batches}
	if *failover {
		tr.afterEpoch = func(epoch int) error {
			if epoch != 1 {
				return nil
			}
			return killLeader(ctx, c, stdout)
		}
	}
	if err := tr.train(ctx); err != nil {
		c.TailLogs(stderr, 20)
		return err
	}
	if err := tr.verifyReplicas(ctx, c); err != nil {
		return err
	}
	if *exit {
		return nil
	}
	fmt.Fprintf(stdout, "\ncluster is serving; try:\n  tsstore status\n  tsstore read --from %d --limit 20\n  tsstore append --stream %s --type Note --data hello\nCtrl-C stops all three nodes.\n", tr.first, tr.run)
	<-ctx.Done()
	fmt.Fprintln(stdout, "stopping")
	for _, n := range c.Nodes {
		n.Stop(10 * time.Second)
	}
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
