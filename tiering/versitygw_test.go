package tiering

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// versityGW is a real S3 server process (versitygw with its posix
// backend) on loopback, for the tests of S3Target.
type versityGW struct {
	t      *testing.T
	bin    string
	root   string
	addr   string
	access string
	secret string
	cmd    *exec.Cmd
	exited chan struct{}
}

// startVersityGW starts versitygw on a free loopback port with a posix
// backend in a temporary directory. It fails the test when the binary is
// missing: scripts/test.sh installs the pinned version into .tools/bin.
func startVersityGW(t *testing.T) *versityGW {
	t.Helper()
	bin, err := filepath.Abs(filepath.Join("..", ".tools", "bin", "versitygw"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("the tiering tests need a real S3 server, versitygw, at %s (%v); install it with "+
			"`GOBIN=$PWD/.tools/bin go install github.com/versity/versitygw/cmd/versitygw@v1.8.0` "+
			"from the repository root, or run scripts/test.sh", bin, err)
	}
	g := &versityGW{t: t, bin: bin, root: t.TempDir(), access: "tsstore-test", secret: "tsstore-test-secret"}
	g.start()
	t.Cleanup(g.stop)
	return g
}

func (g *versityGW) start() {
	g.t.Helper()
	if g.addr == "" {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			g.t.Fatal(err)
		}
		g.addr = l.Addr().String()
		l.Close()
	}
	var out bytes.Buffer
	cmd := exec.Command(g.bin, "--port", g.addr, "--quiet", "posix", "--sidecar", filepath.Join(g.root, "meta"), filepath.Join(g.root, "data"))
	for _, d := range []string{"meta", "data"} {
		if err := os.MkdirAll(filepath.Join(g.root, d), 0o755); err != nil {
			g.t.Fatal(err)
		}
	}
	// Credentials through the environment, not the command line.
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY_ID="+g.access, "ROOT_SECRET_ACCESS_KEY="+g.secret)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		g.t.Fatalf("start versitygw: %v", err)
	}
	g.cmd, g.exited = cmd, make(chan struct{})
	go func() { cmd.Wait(); close(g.exited) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", g.addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		select {
		case <-g.exited:
			g.t.Fatalf("versitygw exited at start: %s", out.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			g.t.Fatalf("versitygw not listening on %s after 20 s: %s", g.addr, out.String())
		}
	}
}

func (g *versityGW) stop() {
	if g.cmd == nil {
		return
	}
	g.cmd.Process.Kill()
	<-g.exited
	g.cmd = nil
}

// target returns an S3Target on a new bucket of the server.
func (g *versityGW) target(bucket, prefix string) *S3Target {
	g.t.Helper()
	cfg := DefaultS3Config()
	cfg.Endpoint = "http://" + g.addr
	cfg.Bucket, cfg.Prefix, cfg.PathStyle = bucket, prefix, true
	cfg.AccessKeyID, cfg.SecretAccessKey = g.access, g.secret
	cfg.RequestTimeout = 30 * time.Second
	target, err := NewS3Target(context.Background(), cfg)
	if err != nil {
		g.t.Fatal(err)
	}
	if _, err := target.client.CreateBucket(context.Background(), &s3.CreateBucketInput{Bucket: aws.String(bucket)}); err != nil {
		g.t.Fatalf("create bucket %s: %v", bucket, err)
	}
	return target
}

func TestS3TargetVersityGW(t *testing.T) {
	g := startVersityGW(t)
	testTarget(t, g.target("tier", "cluster-a/"))
}

// Objects survive a restart of the store; while it is down, every call
// fails with an error that is not ErrNotFound (a caller must never take
// an unreachable store for a missing object) and Put leaves nothing.
func TestS3TargetVersityGWRestart(t *testing.T) {
	g := startVersityGW(t)
	target := g.target("tier", "")
	ctx := context.Background()
	data := bytes.Repeat([]byte("sealed segment bytes "), 50000)
	sum := Checksum(data)
	if _, err := target.Put(ctx, "seg/1.log", bytes.NewReader(data), int64(len(data)), sum); err != nil {
		t.Fatal(err)
	}

	g.stop()
	short, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := target.Head(short, "seg/1.log"); err == nil || errors.Is(err, ErrNotFound) {
		t.Fatalf("Head while the store is down: %v, want an error other than ErrNotFound", err)
	}
	if _, err := target.Put(short, "seg/2.log", bytes.NewReader(data), int64(len(data)), sum); err == nil || errors.Is(err, ErrExists) {
		t.Fatalf("Put while the store is down: %v", err)
	}

	g.start()
	info, err := target.Head(ctx, "seg/1.log")
	if err != nil || info.Size != int64(len(data)) || info.Checksum != sum {
		t.Fatalf("Head after restart = %+v, %v", info, err)
	}
	rc, err := target.GetRange(ctx, "seg/1.log", 1000, 1<<16)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, data[1000:1000+1<<16]) {
		t.Fatalf("GetRange after restart: %d bytes, %v", len(got), err)
	}
	if _, err := target.Head(ctx, "seg/2.log"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the Put that failed while the store was down left %s: %v", "seg/2.log", err)
	}
	// The object is a plain file of the posix backend: what the store
	// holds is the bytes we sent.
	onDisk, err := os.ReadFile(filepath.Join(g.root, "data", "tier", "seg", "1.log"))
	if err != nil || Checksum(onDisk) != sum {
		t.Fatalf("posix backend file: %d bytes, %v; checksum %s", len(onDisk), err, strconv.FormatUint(uint64(Checksum(onDisk)), 16))
	}
}

// changingReader serves good bytes to the first full read (Put's own
// check) and a flipped byte afterwards (the upload): a body damaged
// between the check and the wire.
type changingReader struct {
	good, bad []byte
	served    int64
}

func (r *changingReader) ReadAt(p []byte, off int64) (int, error) {
	src := r.good
	if r.served >= int64(len(r.good)) {
		src = r.bad
	}
	if off >= int64(len(src)) {
		return 0, io.EOF
	}
	n := copy(p, src[off:])
	r.served += int64(n)
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// The real store checks x-amz-checksum-crc32c: a body that no longer
// matches the checksum is refused with ErrChecksum and nothing is stored.
func TestS3TargetVersityGWRefusesDamagedBody(t *testing.T) {
	g := startVersityGW(t)
	target := g.target("tier", "")
	ctx := context.Background()
	good := bytes.Repeat([]byte("0123456789"), 10000)
	bad := bytes.Clone(good)
	bad[777] ^= 1
	_, err := target.Put(ctx, "seg/damaged.log", &changingReader{good: good, bad: bad}, int64(len(good)), Checksum(good))
	if !errors.Is(err, ErrChecksum) {
		t.Fatalf("Put of a body damaged after the check: %v, want ErrChecksum", err)
	}
	if _, err := target.Head(ctx, "seg/damaged.log"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Head after the refused Put: %v, want ErrNotFound", err)
	}
}

// Two writers that both pass Put's head check: the store's If-None-Match
// refuses the second, and the first object stays.
func TestS3TargetVersityGWIfNoneMatch(t *testing.T) {
	g := startVersityGW(t)
	target := g.target("tier", "")
	ctx := context.Background()
	first, second := []byte("first writer"), []byte("second writer")
	if err := target.putObject(ctx, "seg/race.log", bytes.NewReader(first), int64(len(first)), Checksum(first)); err != nil {
		t.Fatal(err)
	}
	err := target.putObject(ctx, "seg/race.log", bytes.NewReader(second), int64(len(second)), Checksum(second))
	if !errors.Is(err, ErrExists) {
		t.Fatalf("second conditional PUT: %v, want ErrExists", err)
	}
	if info, err := target.Head(ctx, "seg/race.log"); err != nil || info.Checksum != Checksum(first) {
		t.Fatalf("Head = %+v, %v; the first object must stay", info, err)
	}
}
