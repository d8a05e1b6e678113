package tiering

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

// newFakeS3 starts an in-process S3 fake (unit tests only; the real
// server is versitygw, versitygw_test.go) with one bucket.
func newFakeS3(t *testing.T, bucket string) string {
	t.Helper()
	backend := s3mem.New()
	if err := backend.CreateBucket(bucket); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(gofakes3.New(backend).Server())
	t.Cleanup(srv.Close)
	return srv.URL
}

func TestS3TargetFake(t *testing.T) {
	cfg := DefaultS3Config()
	cfg.Endpoint = newFakeS3(t, "tier")
	cfg.Bucket = "tier"
	cfg.Prefix = "cluster-a"
	cfg.PathStyle = true
	cfg.AccessKeyID, cfg.SecretAccessKey = "test-key", "test-secret-never-logged"
	target, err := NewS3Target(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if s := target.String(); strings.Contains(s, "secret") || strings.Contains(s, "test-key") || !strings.Contains(s, "cluster-a/") {
		t.Fatalf("String() = %q: it must name bucket and prefix, never credentials", s)
	}
	testTarget(t, target)
}

func TestS3ConfigValidate(t *testing.T) {
	ok := DefaultS3Config()
	ok.Bucket = "b"
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	for name, mut := range map[string]func(*S3Config){
		"no bucket":    func(c *S3Config) { c.Bucket = "" },
		"abs prefix":   func(c *S3Config) { c.Prefix = "/x" },
		"bad endpoint": func(c *S3Config) { c.Endpoint = "127.0.0.1:9000" },
		"no region":    func(c *S3Config) { c.Region = "" },
		"half creds":   func(c *S3Config) { c.AccessKeyID = "k" },
		"neg timeout":  func(c *S3Config) { c.RequestTimeout = -1 },
	} {
		c := ok
		mut(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: Validate accepted %+v", name, c)
		}
	}
}
