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
		"run snapshot every 5000 batches": c.RunSnapshotBatches == 5000,
	} {
		if !got {
			t.Errorf("default %s: not set", name)
		}
	}
}
