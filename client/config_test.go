package client

import (
	"testing"
	"time"
)

func TestDefaultConfigValidates(t *testing.T) {
	if err := DefaultConfig("127.0.0.1:1").Validate(); err != nil {
		t.Fatalf("DefaultConfig: %v", err)
	}
}

func TestConfigValidateRejects(t *testing.T) {
	for name, mutate := range map[string]func(*Config){
		"no addrs":          func(c *Config) { c.Addrs = nil },
		"empty addr":        func(c *Config) { c.Addrs = []string{""} },
		"zero dial timeout": func(c *Config) { c.DialTimeout = 0 },
		"negative request":  func(c *Config) { c.RequestTimeout = -time.Second },
		"negative retries":  func(c *Config) { c.MaxRetries = -1 },
		"zero backoff":      func(c *Config) { c.RetryBackoff = 0 },
		"max below backoff": func(c *Config) { c.MaxRetryBackoff = c.RetryBackoff / 2 },
	} {
		t.Run(name, func(t *testing.T) {
			cfg := DefaultConfig("127.0.0.1:1")
			mutate(&cfg)
			if err := cfg.Validate(); err == nil {
				t.Fatal("Validate accepted an invalid config")
			}
			if _, err := New(cfg); err == nil {
				t.Fatal("New accepted an invalid config")
			}
		})
	}
}

func TestDefaultConfigIsFresh(t *testing.T) {
	a := DefaultConfig("x:1")
	a.DialOptions[0] = nil
	a.Addrs[0] = "y:1"
	b := DefaultConfig("x:1")
	if b.DialOptions[0] == nil || b.Addrs[0] != "x:1" {
		t.Fatal("DefaultConfig shares mutable state between calls")
	}
}
