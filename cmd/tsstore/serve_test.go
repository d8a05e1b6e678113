package main

import (
	"fmt"
	"io"

	"github.com/spf13/pflag"

	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestServeConfigPrecedenceAndStrictFile(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "tsstore.toml")
	os.WriteFile(file, []byte(`
id = "n1"
data_dir = "`+dir+`"
raft_addr = "127.0.0.1:7001"
api_addr = "127.0.0.1:7201"
heartbeat_timeout = "300ms"
election_timeout = "300ms"
bootstrap = ["n1=127.0.0.1:7001", "n2=127.0.0.1:7002"]
`), 0o644)
	t.Setenv("TSSTORE_ELECTION_TIMEOUT", "900ms")
	s := newTestServeFlags()
	if err := s.parse([]string{"--config", file, "--api-addr", "127.0.0.1:9999"}); err != nil {
		t.Fatal(err)
	}
	c := s.cfg
	if c.NodeID != "n1" || c.HeartbeatTimeout != 300*time.Millisecond || len(c.Bootstrap) != 2 {
		t.Fatalf("file values not applied: %+v", c)
	}
	if c.ElectionTimeout != 900*time.Millisecond {
		t.Fatalf("environment did not override the file: %v", c.ElectionTimeout)
	}
	if c.APIAddr != "127.0.0.1:9999" {
		t.Fatalf("flag did not override the file: %v", c.APIAddr)
	}

	os.WriteFile(file, []byte("id = \"n1\"\nheartbeat_timout = \"1s\"\n"), 0o644)
	err := newTestServeFlags().parse([]string{"--config", file})
	if err == nil || !strings.Contains(err.Error(), "unknown keys heartbeat_timout") {
		t.Fatalf("typo in config file: %v", err)
	}
}

func TestServeCheckConfig(t *testing.T) {
	var out, errOut bytes.Buffer
	args := []string{"serve", "--check-config", "--id", "n1", "--data-dir", t.TempDir(),
		"--raft-addr", "127.0.0.1:1", "--api-addr", "127.0.0.1:2"}
	if code := run(args, &out, &errOut); code != 0 || !strings.Contains(out.String(), "configuration ok") {
		t.Fatalf("exit %d, out %q, err %q", code, out.String(), errOut.String())
	}
	errOut.Reset()
	if code := run([]string{"serve", "--check-config", "--id", "bad id"}, &out, &errOut); code == 0 ||
		!strings.Contains(errOut.String(), "node id") {
		t.Fatalf("invalid config accepted: exit %d, %q", code, errOut.String())
	}
}

// testServeFlags parses serve's flags the way cobra does, then applies the
// config file and environment.
type testServeFlags struct{ *serveFlags }

func newTestServeFlags() testServeFlags {
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return testServeFlags{newServeFlags(fs)}
}

func (t testServeFlags) parse(args []string) error {
	if err := t.fs.Parse(args); err != nil {
		return err
	}
	if t.fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected arguments %q", errUsage, t.fs.Args())
	}
	return t.serveFlags.parse()
}
