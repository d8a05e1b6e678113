// Package proccluster runs a tsstore cluster as real operating-system
// processes on loopback: the binary is built once, each node gets its own
// ports and data directory, and every node is controlled by PID (SIGKILL,
// SIGTERM, SIGSTOP/SIGCONT, restart, wipe). `tsstore dev`, the system
// tests and the jepsen harness all drive clusters through it.
package proccluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tsstore/tsstore/internal/freeport"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

// Options describes a cluster to start.
type Options struct {
	// Binary is the tsstore executable.
	Binary string
	// Dir holds one data directory and one log file per node.
	Dir string
	// Nodes is the cluster size (default 3).
	Nodes int
	// Host is the loopback address to bind (default 127.0.0.1).
	Host string
	// BasePort, if non-zero, gives node i raft port BasePort+i and API port
	// BasePort+100+i; zero picks free ports.
	BasePort int
	// ExtraArgs are passed to every `tsstore serve`.
	ExtraArgs []string
	// Env is added to every node's environment.
	Env []string
	// DialOptions, if set, replace the plaintext credentials of the
	// cluster's own calls to the nodes (Status, WaitLeader): TLS and a
	// token for a cluster with security on.
	DialOptions []grpc.DialOption
}

// Cluster is a set of node processes.
type Cluster struct {
	opts  Options
	Nodes []*Node
}

// Node is one tsstore process.
type Node struct {
	ID       string
	RaftAddr string
	APIAddr  string
	DataDir  string
	LogPath  string

	c    *Cluster
	args []string

	mu       sync.Mutex
	cmd      *exec.Cmd
	done     chan struct{} // closed when the current process has exited
	log      *os.File
	exitCode int // of the last process that exited; -1 if killed by a signal
}

// Build compiles ./cmd/tsstore of the module rooted at moduleDir into dir
// and returns the binary's path. Extra go build flags (e.g. -race) may be
// given.
func Build(moduleDir, dir string, flags ...string) (string, error) {
	bin := filepath.Join(dir, "tsstore")
	args := append([]string{"build", "-o", bin}, flags...)
	args = append(args, "./cmd/tsstore")
	cmd := exec.Command("go", args...)
	cmd.Dir = moduleDir
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
}

// FreePorts returns n distinct TCP ports that were free on host a moment
// ago, outside the kernel's ephemeral range, so that a node stopped and
// started again finds its ports free (freeport).
func FreePorts(host string, n int) ([]int, error) {
	return freeport.Ports(host, n)
}

// New lays out a cluster without starting it.
func New(opts Options) (*Cluster, error) {
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	if opts.Binary == "" || opts.Dir == "" {
		return nil, errors.New("proccluster: Binary and Dir are required")
	}
	ports := make([]int, 2*opts.Nodes)
	if opts.BasePort != 0 {
		for i := range opts.Nodes {
			ports[2*i], ports[2*i+1] = opts.BasePort+i, opts.BasePort+100+i
		}
	} else {
		var err error
		if ports, err = FreePorts(opts.Host, 2*opts.Nodes); err != nil {
			return nil, err
		}
	}
	c := &Cluster{opts: opts}
	var peers []string
	for i := range opts.Nodes {
		id := fmt.Sprintf("n%d", i+1)
		n := &Node{
			ID:       id,
			RaftAddr: net.JoinHostPort(opts.Host, fmt.Sprint(ports[2*i])),
			APIAddr:  net.JoinHostPort(opts.Host, fmt.Sprint(ports[2*i+1])),
			DataDir:  filepath.Join(opts.Dir, id),
			LogPath:  filepath.Join(opts.Dir, id+".log"),
			c:        c,
		}
		peers = append(peers, n.ID+"="+n.RaftAddr)
		c.Nodes = append(c.Nodes, n)
	}
	for _, n := range c.Nodes {
		n.args = append([]string{"serve", "--id", n.ID, "--data-dir", n.DataDir,
			"--raft-addr", n.RaftAddr, "--api-addr", n.APIAddr,
			"--bootstrap", strings.Join(peers, ","), localMinFree[0], localMinFree[1]}, opts.ExtraArgs...)
	}
	return c, nil
}

// AddNode lays out one more node and starts it. It is not bootstrapped:
// it waits, serving its API, until it is added to the cluster with
// `tsstore members add` (AddMember), whose arguments are its ID and
// RaftAddr.
func (c *Cluster) AddNode() (*Node, error) {
	i := len(c.Nodes)
	var raftPort, apiPort int
	if c.opts.BasePort != 0 {
		raftPort, apiPort = c.opts.BasePort+i, c.opts.BasePort+100+i
	} else {
		ports, err := FreePorts(c.opts.Host, 2)
		if err != nil {
			return nil, err
		}
		raftPort, apiPort = ports[0], ports[1]
	}
	id := fmt.Sprintf("n%d", i+1)
	n := &Node{
		ID:       id,
		RaftAddr: net.JoinHostPort(c.opts.Host, fmt.Sprint(raftPort)),
		APIAddr:  net.JoinHostPort(c.opts.Host, fmt.Sprint(apiPort)),
		DataDir:  filepath.Join(c.opts.Dir, id),
		LogPath:  filepath.Join(c.opts.Dir, id+".log"),
		c:        c,
	}
	n.args = append([]string{"serve", "--id", n.ID, "--data-dir", n.DataDir,
		"--raft-addr", n.RaftAddr, "--api-addr", n.APIAddr, localMinFree[0], localMinFree[1]}, c.opts.ExtraArgs...)
	c.Nodes = append(c.Nodes, n)
	return n, n.Start()
}

// DropBootstrap removes --bootstrap from this node's command line, from
// the next Start: a node whose data directory was wiped after it was
// removed must join through `tsstore members add`, not bootstrap again.
func (n *Node) DropBootstrap() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for i := 0; i+1 < len(n.args); i++ {
		if n.args[i] == "--bootstrap" {
			n.args = append(n.args[:i:i], n.args[i+2:]...)
			return
		}
	}
}

// Exited waits up to d for the node's process to exit on its own (as a
// removed node does) and reports whether it did.
func (n *Node) Exited(d time.Duration) bool { return n.wait(d) == nil }

// Start starts every node that is not running.
func (c *Cluster) Start() error {
	for _, n := range c.Nodes {
		if n.Running() {
			continue
		}
		if err := n.Start(); err != nil {
			return err
		}
	}
	return nil
}

// APIAddrs lists every node's API address.
func (c *Cluster) APIAddrs() []string {
	out := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		out[i] = n.APIAddr
	}
	return out
}

// Close kills every node.
func (c *Cluster) Close() {
	for _, n := range c.Nodes {
		n.Signal(syscall.SIGCONT)
		n.Kill()
	}
}

// localMinFree lowers the free-space watermark for local clusters (dev,
// tests, bench) to 32 MiB: their nodes share one small disk, and a
// developer's nearly full disk should not refuse a demo. ExtraArgs come
// after it and may set another.
var localMinFree = [2]string{"--min-free-bytes", "33554432"}

// AddArgs appends arguments to this node's `tsstore serve` command line,
// e.g. a per-node --raft-dial-override routing its peers through fault
// injection proxies. They apply from the next Start.
func (n *Node) AddArgs(args ...string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.args = append(n.args, args...)
}

// Start launches the node's process, appending its output to LogPath.
func (n *Node) Start() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil {
		return fmt.Errorf("proccluster: %s already running", n.ID)
	}
	if err := os.MkdirAll(filepath.Dir(n.LogPath), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(n.LogPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(n.c.opts.Binary, n.args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), n.c.opts.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("proccluster: starting %s: %w", n.ID, err)
	}
	done := make(chan struct{})
	n.cmd, n.done, n.log = cmd, done, f
	go func() {
		cmd.Wait()
		f.Close()
		n.mu.Lock()
		if n.cmd == cmd {
			n.cmd = nil
		}
		n.exitCode = cmd.ProcessState.ExitCode()
		n.mu.Unlock()
		close(done)
	}()
	return nil
}

// ExitCode is the exit status of the node's last exited process (-1 when
// a signal ended it, 0 before any exit).
func (n *Node) ExitCode() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.exitCode
}

// Running reports whether the node's process is alive.
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cmd != nil
}

// PID is the process id, or 0 when not running.
func (n *Node) PID() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return 0
	}
	return n.cmd.Process.Pid
}

// Signal sends sig to the process if it runs.
func (n *Node) Signal(sig syscall.Signal) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return nil
	}
	return n.cmd.Process.Signal(sig)
}

// wait waits for the current process to exit, up to d.
func (n *Node) wait(d time.Duration) error {
	n.mu.Lock()
	done := n.done
	running := n.cmd != nil
	n.mu.Unlock()
	if !running {
		return nil
	}
	select {
	case <-done:
		return nil
	case <-time.After(d):
		return fmt.Errorf("proccluster: %s did not exit within %v", n.ID, d)
	}
}

// Kill sends SIGKILL and waits for the process to exit.
func (n *Node) Kill() error {
	n.Signal(syscall.SIGKILL)
	return n.wait(10 * time.Second)
}

// Stop sends SIGTERM and waits for a clean exit, killing after timeout.
func (n *Node) Stop(timeout time.Duration) error {
	n.Signal(syscall.SIGCONT)
	n.Signal(syscall.SIGTERM)
	if err := n.wait(timeout); err != nil {
		n.Kill()
		return err
	}
	return nil
}

// Restart kills the node and starts it again on the same data.
func (n *Node) Restart() error {
	if err := n.Kill(); err != nil {
		return err
	}
	return n.Start()
}

// Wipe deletes the node's data directory; the node must be stopped.
func (n *Node) Wipe() error {
	if n.Running() {
		return fmt.Errorf("proccluster: wipe %s while running", n.ID)
	}
	return os.RemoveAll(n.DataDir)
}

// Logs returns the node's log file so far.
func (n *Node) Logs() string {
	b, _ := os.ReadFile(n.LogPath)
	return string(b)
}

// Status calls the node's Status RPC.
func (n *Node) Status(ctx context.Context) (*pb.StatusResponse, error) {
	opts := n.c.opts.DialOptions
	if len(opts) == 0 {
		opts = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	conn, err := grpc.NewClient(n.APIAddr, opts...)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return pb.NewEventStoreClient(conn).Status(ctx, &pb.StatusRequest{})
}

// WaitLeader waits until a running node reports itself leader with its
// API address registered (so followers can forward to it), and returns it.
func (c *Cluster) WaitLeader(ctx context.Context) (*Node, error) {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	var last error
	for {
		for _, n := range c.Nodes {
			if !n.Running() {
				continue
			}
			sctx, cancel := context.WithTimeout(ctx, time.Second)
			st, err := n.Status(sctx)
			cancel()
			if err != nil {
				last = err
				continue
			}
			if st.Role == "leader" && st.LeaderApiAddress != "" {
				return n, nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("proccluster: no leader: %w (last error: %v)", ctx.Err(), last)
		case <-t.C:
		}
	}
}

// TailLogs copies the last lines of every node's log to w, for test
// failures.
func (c *Cluster) TailLogs(w io.Writer, lines int) {
	for _, n := range c.Nodes {
		all := strings.Split(strings.TrimRight(n.Logs(), "\n"), "\n")
		if len(all) > lines {
			all = all[len(all)-lines:]
		}
		fmt.Fprintf(w, "==== %s (%s)\n%s\n", n.ID, n.LogPath, strings.Join(all, "\n"))
	}
}
