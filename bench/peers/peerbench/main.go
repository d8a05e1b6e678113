// Command peerbench runs tsstore's benchmark workloads against NATS
// JetStream and etcd clusters and compares the results with tsstore's.
//
//	peerbench run --system etcd --kind etcd --endpoints ... --nodes n1=PID:DIR,... --json etcd.json
//	peerbench compare [--markdown] tsstore.json nats-default.json ...
//	peerbench merge tsstore.json tsstore-replay.json tsstore-append.json
//
// bench/peers/run.sh starts the clusters and calls both; see
// bench/peers/README.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "run":
		err = runCmd(os.Args[2:])
	case "compare":
		err = compareCmd(os.Args[2:], os.Stdout)
	case "merge":
		err = mergeCmd(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "peerbench:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: peerbench run [flags] | peerbench compare [--markdown] FILE.json... | peerbench merge OUT.json IN.json...")
	os.Exit(2)
}

func runCmd(args []string) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	sysName := fs.String("system", "", "system name in the report: nats-default, nats-sync-always or etcd")
	kind := fs.String("kind", "", "nats or etcd (default: from --system)")
	endpoints := fs.String("endpoints", "", "comma-separated client URLs (nats://127.0.0.1:4222,... or http://127.0.0.1:2379,...)")
	nodes := fs.String("nodes", "", "the cluster's processes as NAME=PID:DATADIR,... (for f and g)")
	size := fs.Int("size", 256, "payload bytes per event")
	duration := fs.Duration("duration", 10*time.Second, "length of each of the workloads a, b and c, and of the steady phase around each kill in f")
	producers := fs.Int("producers", 64, "concurrent producers in b and f")
	window := fs.Int("window", 1024, "events in flight in c")
	events := fs.String("events", "1000000", "comma-separated log sizes loaded and replayed in d, cumulatively")
	streamEvents := fs.Int("stream-events", 100000, "events of the stream replayed in e, spread evenly over the largest log")
	workloads := fs.String("workloads", "a,b,c,d,e,f,g", "workloads to run")
	kills := fs.Int("failovers", 5, "f: leader kills (the median is reported)")
	pidFile := fs.String("pidfile", "", "f: append the PIDs of restarted nodes to this file")
	opTimeout := fs.Duration("op-timeout", time.Second, "timeout of one waiting append, after which it is retried")
	txnOps := fs.Int("txn-ops", 128, "etcd: Puts per Txn in c and the load (the server's --max-txn-ops)")
	fs.IntVar(&natsConsumeBuffer, "nats-consume-buffer", natsConsumeBuffer, "NATS: messages the ordered consumer buffers (PullMaxMessages) in d and e")
	fs.IntVar(&natsFetchBatch, "nats-fetch-batch", natsFetchBatch, "NATS: messages per Fetch of the pull consumer in d and e")
	out := fs.String("json", "", "write the report to this file")
	var extra kvFlag
	fs.Var(&extra, "config", "KEY=VALUE added to the report's config (repeatable)")
	fs.Parse(args)
	if *kind == "" {
		*kind, _, _ = strings.Cut(*sysName, "-")
	}
	cfg := runConfig{size: *size, duration: *duration, producers: *producers, window: *window,
		streamEvents: *streamEvents, kills: *kills, opTimeout: *opTimeout, pidFile: *pidFile, workloads: map[string]bool{}, log: os.Stderr}
	for _, w := range strings.Split(*workloads, ",") {
		cfg.workloads[strings.TrimSpace(w)] = true
	}
	for _, e := range strings.Split(*events, ",") {
		var n int
		if _, err := fmt.Sscan(e, &n); err != nil || n <= 0 {
			return fmt.Errorf("--events %q", *events)
		}
		cfg.events = append(cfg.events, n)
	}
	var err error
	if cfg.nodes, err = parseNodes(*nodes); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var sys system
	switch *kind {
	case "nats":
		s, err := newNATS(ctx, *endpoints, *opTimeout)
		if err != nil {
			return err
		}
		sys = s
	case "etcd":
		// A Txn must stay under the server's 1.5 MiB --max-request-bytes.
		*txnOps = max(1, min(*txnOps, (1<<20)/(*size+100)))
		s, err := newEtcd(ctx, *endpoints, *opTimeout, *txnOps)
		if err != nil {
			return err
		}
		sys = s
	default:
		return fmt.Errorf("--kind %q: want nats or etcd", *kind)
	}
	defer sys.Close()
	defer stopRestarted()
	rep := &Report{System: *sysName, Machine: machine(), Config: map[string]any{
		"event_bytes": *size, "duration_s": duration.Seconds(), "producers": *producers, "window": *window,
		"events": cfg.events, "stream_events": *streamEvents, "workloads": *workloads,
		"op_timeout_s": opTimeout.Seconds(), "failovers": *kills, "endpoints": *endpoints,
		"client": "peerbench (bench/peers/peerbench)",
	}}
	if *kind == "etcd" {
		rep.Config["txn_ops"] = *txnOps
	}
	for k, v := range extra {
		rep.Config[k] = v
	}
	rep.Results, err = runAll(ctx, sys, cfg)
	if *out != "" {
		if werr := writeReport(*out, rep); werr != nil && err == nil {
			err = werr
		}
	}
	return err
}

// kvFlag collects repeated KEY=VALUE flags.
type kvFlag map[string]string

func (f *kvFlag) String() string { return fmt.Sprint(map[string]string(*f)) }

func (f *kvFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok {
		return fmt.Errorf("%q is not KEY=VALUE", s)
	}
	if *f == nil {
		*f = kvFlag{}
	}
	(*f)[k] = v
	return nil
}
