package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/tsstore/tsstore/client"
)

// clientFlags are the connection flags every client command shares.
type clientFlags struct {
	addrs   string
	timeout time.Duration
	json    bool
}

func (c *clientFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.addrs, "addr", "127.0.0.1:7201,127.0.0.1:7202,127.0.0.1:7203", "comma-separated API addresses of any cluster nodes")
	fs.DurationVar(&c.timeout, "timeout", 10*time.Second, "overall time limit of the command")
	fs.BoolVar(&c.json, "json", false, "print JSON instead of text")
}

func (c *clientFlags) connect() (*client.Client, context.Context, context.CancelFunc, error) {
	cfg := client.DefaultConfig()
	for _, a := range strings.Split(c.addrs, ",") {
		if a = strings.TrimSpace(a); a != "" {
			cfg.Addrs = append(cfg.Addrs, a)
		}
	}
	cl, err := client.New(cfg)
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	return cl, ctx, cancel, nil
}

func newFlagSet(name string, stderr io.Writer, usage string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: tsstore %s\n\nflags:\n", usage)
		fs.PrintDefaults()
	}
	return fs
}
