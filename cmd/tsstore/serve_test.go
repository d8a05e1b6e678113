package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"
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

// Every configuration error of serve exits 78 (EX_CONFIG), so systemd's
// RestartPreventExitStatus=78 stops a unit from retrying a typo for ever;
// --check-config (the unit's ExecStartPre) exits 78 on the same errors.
func TestServeConfigErrorsExit78(t *testing.T) {
	dir := t.TempDir()
	base := []string{"--id", "n1", "--data-dir", filepath.Join(dir, "data"), "--raft-addr", freeAddr(t), "--api-addr", freeAddr(t)}
	write := func(name, body string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	_, ca, node, _ := securityFiles(t)
	os.Chmod(node.KeyFile, 0o644)
	tlsArgs := []string{"--cluster", "rack-a", "--tls-cert", node.CertFile, "--tls-key", node.KeyFile,
		"--peer-tls-cert", node.CertFile, "--peer-tls-key", node.KeyFile, "--peer-tls-ca", ca.CertFile}
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"bad flag value", []string{"--heartbeat-timeout", "soon"}, "invalid argument"},
		{"unknown flag", []string{"--heartbeat-timout", "1s"}, "unknown flag"},
		{"extra argument", []string{"now"}, "unexpected arguments"},
		{"missing config file", []string{"--config", filepath.Join(dir, "nope.toml")}, "no such file"},
		{"invalid TOML", []string{"--config", write("bad.toml", "id = \n", 0o644)}, "config " + dir},
		{"unknown key", []string{"--config", write("typo.toml", "heartbeat_timout = \"1s\"\n", 0o644)}, "unknown keys heartbeat_timout"},
		{"unreadable config file", []string{"--config", dir}, "is a directory"},
		{"bad environment", nil, "TSSTORE_ELECTION_TIMEOUT"},
		{"invalid setting", []string{"--id", "bad id"}, "node id"},
		{"bad log level", []string{"--log-level", "loud"}, "log level"},
		{"world-readable TLS key", tlsArgs, "is readable by every user"},
	} {
		for _, check := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/check=%v", tt.name, check), func(t *testing.T) {
				if tt.name == "bad environment" {
					t.Setenv("TSSTORE_ELECTION_TIMEOUT", "soon")
				}
				args := append([]string{"serve"}, base...)
				if check {
					args = append(args, "--check-config")
				}
				var out, errOut bytes.Buffer
				code := run(append(args, tt.args...), &out, &errOut)
				if code != 78 || !strings.Contains(errOut.String(), tt.want) {
					t.Fatalf("exit %d, stderr %q; want 78 and %q", code, errOut.String(), tt.want)
				}
				if _, err := os.Stat(filepath.Join(dir, "data")); err == nil {
					t.Fatal("a configuration error created the data directory")
				}
			})
		}
	}
	var out, errOut bytes.Buffer
	if code := run([]string{"serve", "-h"}, &out, &errOut); code != 0 {
		t.Fatalf("serve -h: exit %d", code)
	}
	if code := run(append(append([]string{"serve", "--check-config"}, base...), "--log-format", "text"), &out, &errOut); code != 0 {
		t.Fatalf("valid configuration: exit %d, %q", code, errOut.String())
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

// Tiering is off unless a target is set; a target needs a policy, and
// the directory target's settings come through the file like the rest.
func TestServeTierSettings(t *testing.T) {
	dir := t.TempDir()
	base := []string{"--id", "n1", "--data-dir", dir, "--raft-addr", "127.0.0.1:7001", "--api-addr", "127.0.0.1:7201"}
	s := newTestServeFlags()
	if err := s.parse(base); err != nil || s.cfg.Tier.Target != nil {
		t.Fatalf("default: target %v, %v", s.cfg.Tier.Target, err)
	}
	file := filepath.Join(dir, "tsstore.toml")
	os.WriteFile(file, []byte("tier_dir = \""+t.TempDir()+"\"\ntier_hot_bytes = 1048576\n"), 0o644)
	s = newTestServeFlags()
	if err := s.parse(append(base, "--config", file)); err != nil || s.cfg.Tier.Target == nil || s.cfg.Tier.HotBytes != 1<<20 {
		t.Fatalf("tier_dir in the file: %+v, %v", s.cfg.Tier, err)
	}
	for name, args := range map[string][]string{
		"target without policy": {"--tier-dir", t.TempDir()},
		"policy without target": {"--tier-after", "720h"},
		"two targets":           {"--tier-dir", t.TempDir(), "--tier-s3-bucket", "b", "--tier-after", "1h"},
		"bad endpoint":          {"--tier-s3-bucket", "b", "--tier-s3-endpoint", "localhost:9000", "--tier-after", "1h"},
	} {
		if err := newTestServeFlags().parse(append(base, args...)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	t.Setenv("TSSTORE_TIER_S3_BUCKET", "cold")
	s = newTestServeFlags()
	if err := s.parse(append(base, "--tier-s3-endpoint", "http://127.0.0.1:7070", "--tier-s3-path-style", "--tier-after", "720h")); err != nil || s.cfg.Tier.Target == nil {
		t.Fatalf("s3 target from the environment and flags: %v", err)
	}
	if got := s.cfg.Tier.Target.String(); got != "s3://cold/ (http://127.0.0.1:7070)" {
		t.Fatalf("target %q", got)
	}
}
