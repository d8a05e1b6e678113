package server

import (
	"testing"
	"time"
)

// The defaults the docs promise are the ones DefaultConfig sets.
func TestDefaultConfigBounds(t *testing.T) {
	c := DefaultConfig()
	for name, got := range map[string]bool{
		"producer ttl 7 days":             c.ProducerTTL == 7*24*time.Hour,
		"min free 256 MiB":                c.MinFreeBytes == 256<<20,
		"disk resume 64 MiB":              c.DiskResumeBytes == 64<<20,
		"snapshot threshold 64 MiB":       c.SnapshotThresholdBytes == 64<<20,
		"trailing 128 MiB":                c.TrailingBytes == 128<<20,
		"log cache 16 MiB":                c.LogCacheBytes == 16<<20,
		"read streams 4096":               c.MaxReadStreams == 4096,
		"streams per connection 1024":     c.MaxStreamsPerConn == 1024,
		"stream inflight 256 requests":    c.MaxStreamInflight == 256,
		"conn send budget 8 MiB":          c.ConnSendBytes == 8<<20,
		"node send budget 32 MiB":         c.NodeSendBytes == 32<<20,
		"send stall timeout 2 s":          c.SendStallTimeout == 2*time.Second,
		"streams per token 1024":          c.MaxStreamsPerToken == 1024,
		"conn request budget 64 MiB":      c.ConnRequestBytes == 64<<20,
		"node request budget 128 MiB":     c.NodeRequestBytes == 128<<20,
		"request window 64 KiB":           c.RequestWindowBytes == 64<<10,
		"run snapshot every 5000 batches": c.RunSnapshotBatches == 5000,
	} {
		if !got {
			t.Errorf("default %s: not set", name)
		}
	}
}

// The request budgets must hold two largest requests, and the node's
// must hold the connection's: Validate says so, naming the least.
func TestRequestBudgetValidation(t *testing.T) {
	for name, tweak := range map[string]func(*Config){
		"conn budget below two reads": func(c *Config) { c.ConnRequestBytes = 2*int64(c.MaxRequestBytes) + 1<<20 },
		"node budget below conn":      func(c *Config) { c.NodeRequestBytes = c.ConnRequestBytes - 1 },
		"window below 64 KiB":         func(c *Config) { c.RequestWindowBytes = 32 << 10 },
	} {
		c := DefaultConfig()
		c.NodeID, c.DataDir, c.RaftAddr, c.APIAddr = "n1", t.TempDir(), "127.0.0.1:1", "127.0.0.1:2"
		if err := c.Validate(); err != nil {
			t.Fatalf("defaults: %v", err)
		}
		tweak(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
