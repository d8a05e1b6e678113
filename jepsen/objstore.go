package jepsen

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/tsstore/tsstore/internal/freeport"
)

// The object store of the tiering scenario: a real versitygw process
// (the pinned .tools/bin/versitygw, posix backend) on loopback, and in
// front of it a fault-injecting HTTP proxy that every node's
// --tier-s3-endpoint points at. The store nemesis (tiering.go) kills and
// restarts versitygw (store down: the proxy answers 502), makes the proxy
// slow or answer a fraction of requests with 500 InternalError, and
// deletes or flips a byte of committed objects directly in the posix
// backend directory.

// Credentials of the harness's versitygw (its root account); the nodes
// get them through the standard AWS environment variables.
const (
	storeAccessKey = "tsstore-jepsen"
	storeSecretKey = "tsstore-jepsen-secret"
	storeBucket    = "jepsen"
)

// objectStore is one versitygw process and its proxy.
type objectStore struct {
	bin  string
	root string // posix backend: root/data/<bucket>/<key>; root/meta the sidecar
	addr string // versitygw's host:port
	log  *os.File

	mu struct {
		sync.Mutex
		cmd    *exec.Cmd
		exited chan struct{}
	}

	proxy *storeProxy
}

// versitygwBinary finds .tools/bin/versitygw of the module whose tsstore
// binary is being tested: above the working directory.
func versitygwBinary() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			p := filepath.Join(dir, ".tools", "bin", "versitygw")
			if _, err := os.Stat(p); err != nil {
				return "", fmt.Errorf("the tiering scenario needs versitygw at %s (scripts/test.sh installs it): %w", p, err)
			}
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("the tiering scenario needs .tools/bin/versitygw: run from inside the tsstore module")
		}
		dir = parent
	}
}

// startObjectStore starts versitygw in dir, creates the bucket and starts
// the proxy. close stops both. taken are addresses laid out for other
// processes that are not listening yet, which versitygw must not take.
func startObjectStore(ctx context.Context, dir string, seed uint64, taken map[string]bool) (*objectStore, error) {
	bin, err := versitygwBinary()
	if err != nil {
		return nil, err
	}
	s := &objectStore{bin: bin, root: dir}
	for _, d := range []string{"meta", "data"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	if s.log, err = os.OpenFile(filepath.Join(dir, "versitygw.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644); err != nil {
		return nil, err
	}
	if s.addr, err = freeAddr(taken); err != nil {
		return nil, err
	}
	if err := s.start(); err != nil {
		s.close()
		return nil, err
	}
	if s.proxy, err = newStoreProxy(s.addr, seed); err != nil {
		s.close()
		return nil, err
	}
	client := s3.New(s3.Options{Region: "us-east-1", BaseEndpoint: aws.String("http://" + s.addr), UsePathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider(storeAccessKey, storeSecretKey, "")})
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := client.CreateBucket(cctx, &s3.CreateBucketInput{Bucket: aws.String(storeBucket)}); err != nil {
		s.close()
		return nil, fmt.Errorf("versitygw: create bucket: %w", err)
	}
	return s, nil
}

// serveArgs point a node at the store through the proxy.
func (s *objectStore) serveArgs() []string {
	return []string{"--tier-s3-bucket", storeBucket, "--tier-s3-endpoint", "http://" + s.proxy.addr,
		"--tier-s3-path-style", "--tier-s3-region", "us-east-1"}
}

// env gives the nodes the store's credentials (never on a command line).
func storeEnv() []string {
	return []string{"AWS_ACCESS_KEY_ID=" + storeAccessKey, "AWS_SECRET_ACCESS_KEY=" + storeSecretKey}
}

// start starts versitygw (if it is not running) and waits until it
// listens.
func (s *objectStore) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.cmd != nil {
		return nil
	}
	cmd := exec.Command(s.bin, "--port", s.addr, "--quiet", "posix", "--sidecar", filepath.Join(s.root, "meta"), filepath.Join(s.root, "data"))
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY_ID="+storeAccessKey, "ROOT_SECRET_ACCESS_KEY="+storeSecretKey)
	cmd.Stdout, cmd.Stderr = s.log, s.log
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start versitygw: %w", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	s.mu.cmd, s.mu.exited = cmd, exited
	for deadline := time.Now().Add(20 * time.Second); ; {
		c, err := net.DialTimeout("tcp", s.addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-exited:
			s.mu.cmd = nil
			return errors.New("versitygw exited at start (see versitygw.log)")
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("versitygw not listening on %s after 20 s", s.addr)
		}
	}
}

// freeAddr returns a free loopback host:port that is not in taken, and
// adds it to taken.
func freeAddr(taken map[string]bool) (string, error) {
	for range 100 {
		addrs, err := freeport.Addrs("127.0.0.1", 1)
		if err != nil {
			return "", err
		}
		if !taken[addrs[0]] {
			taken[addrs[0]] = true
			return addrs[0], nil
		}
	}
	return "", errors.New("no free loopback port")
}

// kill SIGKILLs versitygw: the store is down until start.
func (s *objectStore) kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.cmd == nil {
		return
	}
	s.mu.cmd.Process.Kill()
	<-s.mu.exited
	s.mu.cmd = nil
}

func (s *objectStore) close() {
	if s == nil {
		return
	}
	s.kill()
	if s.proxy != nil {
		s.proxy.close()
	}
	if s.log != nil {
		s.log.Close()
	}
}

// objectPath is where the posix backend keeps key.
func (s *objectStore) objectPath(key string) string {
	return filepath.Join(s.root, "data", storeBucket, filepath.FromSlash(key))
}

// deleteObject removes key's file behind the store's back.
func (s *objectStore) deleteObject(key string) error { return os.Remove(s.objectPath(key)) }

// flipByte flips every bit of one byte of key's file at a random
// position, behind the store's back (its metadata still has the old
// checksum), and returns the position.
func (s *objectStore) flipByte(key string, rng *rand.Rand) (int64, error) {
	f, err := os.OpenFile(s.objectPath(key), os.O_RDWR, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if fi.Size() == 0 {
		return 0, errors.New("empty object")
	}
	pos := rng.Int64N(fi.Size())
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, pos); err != nil {
		return 0, err
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, pos); err != nil {
		return 0, err
	}
	return pos, f.Sync()
}

// storeProxy is an HTTP reverse proxy in front of versitygw that delays
// every request or answers a fraction of them with 500 InternalError.
// The Host header is passed through unchanged, so the nodes' SigV4
// signatures (made for the proxy's address) still verify.
type storeProxy struct {
	addr string
	srv  *http.Server
	ln   net.Listener

	mu struct {
		sync.Mutex
		delay   time.Duration
		errRate float64
		rng     *rand.Rand
	}
	requests, injected, failed atomic.Int64
}

func newStoreProxy(target string, seed uint64) (*storeProxy, error) {
	u, err := url.Parse("http://" + target)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &storeProxy{addr: ln.Addr().String(), ln: ln}
	p.mu.rng = rand.New(rand.NewPCG(seed, 41))
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(u)
			r.Out.Host = r.In.Host // signed by the node for the proxy's address
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			p.failed.Add(1) // versitygw is down
			w.WriteHeader(http.StatusBadGateway)
		},
	}
	p.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.requests.Add(1)
		delay, fail := p.draw()
		if delay > 0 {
			select {
			case <-time.After(delay):
			case <-r.Context().Done():
				return
			}
		}
		if fail {
			p.injected.Add(1)
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusInternalServerError)
			fmt.Fprint(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code><Message>injected by the jepsen store proxy</Message></Error>`)
			return
		}
		rp.ServeHTTP(w, r)
	})}
	go p.srv.Serve(ln)
	return p, nil
}

// draw decides one request's fate under the current mode.
func (p *storeProxy) draw() (time.Duration, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mu.delay, p.mu.errRate > 0 && p.mu.rng.Float64() < p.mu.errRate
}

// set changes the mode: every request delayed by delay, a fraction
// errRate answered 500. set(0, 0) heals.
func (p *storeProxy) set(delay time.Duration, errRate float64) {
	p.mu.Lock()
	p.mu.delay, p.mu.errRate = delay, errRate
	p.mu.Unlock()
}

func (p *storeProxy) close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	p.srv.Shutdown(ctx)
	p.srv.Close()
}
