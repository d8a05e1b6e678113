// Package s3test starts a real S3 server for tests: versitygw with its
// posix backend in a temporary directory, on a free loopback port, with
// root credentials passed through its environment.
//
// The binary is the pinned versitygw in the repository's .tools/bin
// (scripts/test.sh installs it). A machine without it fails the test with
// the command that installs it; it never skips.
package s3test

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/tsstore/tsstore/internal/freeport"
)

// Version is the versitygw release the tests run (scripts/test.sh).
const Version = "v1.8.0"

// Server is one running versitygw process.
type Server struct {
	Root      string // the posix backend: Root/data/<bucket>/<key>
	Addr      string // host:port
	AccessKey string
	SecretKey string

	t      testing.TB
	bin    string
	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	out    *bytes.Buffer
}

// Start starts versitygw; the test's cleanup stops it.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := binary()
	if err != nil {
		t.Fatalf("the tiering tests need a real S3 server, versitygw %s, at .tools/bin/versitygw (%v); install it with "+
			"`GOBIN=$PWD/.tools/bin go install github.com/versity/versitygw/cmd/versitygw@%s` "+
			"from the repository root, or run scripts/test.sh", Version, err, Version)
	}
	s := &Server{Root: t.TempDir(), AccessKey: "tsstore-test", SecretKey: "tsstore-test-secret", t: t, bin: bin}
	for _, d := range []string{"meta", "data"} {
		if err := os.MkdirAll(filepath.Join(s.Root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	addrs, err := freeport.Addrs("127.0.0.1", 1)
	if err != nil {
		t.Fatal(err)
	}
	s.Addr = addrs[0]
	s.Restart()
	t.Cleanup(s.Stop)
	return s
}

// binary finds .tools/bin/versitygw above the working directory.
func binary() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			p := filepath.Join(dir, ".tools", "bin", "versitygw")
			_, err := os.Stat(p)
			return p, err
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", os.ErrNotExist
		}
		dir = parent
	}
}

// Endpoint is the server's URL.
func (s *Server) Endpoint() string { return "http://" + s.Addr }

// Restart starts the server again after Stop (or the first time), on the
// same address and data, and waits until it listens.
func (s *Server) Restart() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return
	}
	out := &bytes.Buffer{}
	cmd := exec.Command(s.bin, "--port", s.Addr, "--quiet", "posix", "--sidecar", filepath.Join(s.Root, "meta"), filepath.Join(s.Root, "data"))
	// Credentials through the environment, not the command line.
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY_ID="+s.AccessKey, "ROOT_SECRET_ACCESS_KEY="+s.SecretKey)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("start versitygw: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	s.cmd, s.exited, s.out = cmd, exited, out
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", s.Addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		select {
		case <-exited:
			s.t.Fatalf("versitygw exited at start: %s", out.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("versitygw not listening on %s after 20 s: %s", s.Addr, out.String())
		}
	}
}

// Stop kills the server (an outage); Restart brings it back.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Kill()
	<-s.exited
	s.cmd = nil
}

// CreateBucket creates a bucket.
func (s *Server) CreateBucket(bucket string) {
	s.t.Helper()
	client := s3.New(s3.Options{Region: "us-east-1", BaseEndpoint: aws.String(s.Endpoint()), UsePathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider(s.AccessKey, s.SecretKey, "")})
	if _, err := client.CreateBucket(context.Background(), &s3.CreateBucketInput{Bucket: aws.String(bucket)}); err != nil {
		s.t.Fatalf("create bucket %s: %v", bucket, err)
	}
}
