package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestServeMetricsAddr(t *testing.T) {
	base := []string{"--id", "n1", "--data-dir", t.TempDir(), "--raft-addr", "127.0.0.1:1", "--api-addr", "127.0.0.1:2"}
	s := newTestServeFlags()
	if err := s.parse(base); err != nil || s.cfg.MetricsAddr != "" {
		t.Fatalf("default metrics addr %q, %v (want off)", s.cfg.MetricsAddr, err)
	}
	s = newTestServeFlags()
	if err := s.parse(append(base, "--metrics-addr", "127.0.0.1:9200")); err != nil || s.cfg.MetricsAddr != "127.0.0.1:9200" {
		t.Fatalf("flag: %q, %v", s.cfg.MetricsAddr, err)
	}
	file := filepath.Join(t.TempDir(), "tsstore.toml")
	os.WriteFile(file, []byte("metrics_addr = \"127.0.0.1:9300\"\n"), 0o644)
	s = newTestServeFlags()
	if err := s.parse(append(base, "--config", file)); err != nil || s.cfg.MetricsAddr != "127.0.0.1:9300" {
		t.Fatalf("config file: %q, %v", s.cfg.MetricsAddr, err)
	}
	t.Setenv("TSSTORE_METRICS_ADDR", "127.0.0.1:9400")
	s = newTestServeFlags()
	if err := s.parse(base); err != nil || s.cfg.MetricsAddr != "127.0.0.1:9400" {
		t.Fatalf("environment: %q, %v", s.cfg.MetricsAddr, err)
	}
	err := newTestServeFlags().parse(append(base, "--metrics-addr", "9200"))
	if err == nil || !strings.Contains(err.Error(), "metrics address") {
		t.Fatalf("bad metrics address accepted: %v", err)
	}
}
