package server

import (
	"context"
	"crypto/sha256"
	"fmt"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
	reflectpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

const (
	readTok   = "read-token-0123456789"
	appendTok = "append-token-0123456789"
	adminTok  = "admin-token-0123456789"
)

func writeTokens(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// testTokens has one token per role; admin's is stored as its hash.
func testTokens(t *testing.T) string {
	return writeTokens(t, fmt.Sprintf("# role name token\nread dashboard %s\nappend trainer %s\n\nadmin ops sha256:%x\n",
		readTok, appendTok, sha256.Sum256([]byte(adminTok))))
}

func withToken(ctx context.Context, token string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
}

func oneEvent() *pb.AppendRequest {
	return &pb.AppendRequest{Events: []*pb.Event{{Stream: "s", Type: "t", Payload: []byte("x")}}}
}

// Each role may do its calls and no more; missing and unknown tokens are
// Unauthenticated, a role too low is PermissionDenied naming the role the
// call needs. Refusals are counted and logged by token name, never token.
func TestAuthRoles(t *testing.T) {
	p := newTestPKI(t)
	tokens := testTokens(t)
	var logs *logBuf
	tc := newTestCluster(t, 1, func(c *Config) { logs = p.secure(t, c, true); c.AuthTokensFile = tokens })
	n := tc.nodes[0]
	conn := dialWith(t, n.APIAddr(), credentials.NewTLS(trust(t, p.ca, nil)))
	es, cl := pb.NewEventStoreClient(conn), pb.NewClusterClient(conn)
	ctx := ctxT(t)

	t.Run("no token", func(t *testing.T) {
		_, err := es.Status(ctx, &pb.StatusRequest{})
		wantStatus(t, err, codes.Unauthenticated, "/tsstore.v1.EventStore/Status needs a bearer token with role read or higher")
		_, err = es.Append(ctx, oneEvent())
		wantStatus(t, err, codes.Unauthenticated, "needs a bearer token with role append")
		stream, err := es.Read(ctx, &pb.ReadRequest{})
		if err == nil {
			_, err = stream.Recv()
		}
		wantStatus(t, err, codes.Unauthenticated, "needs a bearer token")
		_, err = es.Status(metadata.AppendToOutgoingContext(ctx, "authorization", "Basic "+readTok), &pb.StatusRequest{})
		wantStatus(t, err, codes.Unauthenticated, "needs a bearer token")
	})
	t.Run("unknown token", func(t *testing.T) {
		_, err := es.Status(withToken(ctx, "not-a-token-of-this-cluster"), &pb.StatusRequest{})
		wantStatus(t, err, codes.Unauthenticated, "bearer token is not in this node's tokens file")
	})
	t.Run("read", func(t *testing.T) {
		rctx := withToken(ctx, readTok)
		if _, err := es.Status(rctx, &pb.StatusRequest{}); err != nil {
			t.Fatal(err)
		}
		if _, err := es.ListStreams(rctx, &pb.ListStreamsRequest{}); err != nil {
			t.Fatal(err)
		}
		_, err := es.Append(rctx, oneEvent())
		wantStatus(t, err, codes.PermissionDenied, `token "dashboard" has role read; /tsstore.v1.EventStore/Append needs role append or higher`)
		_, err = cl.AddMember(rctx, &pb.AddMemberRequest{})
		wantStatus(t, err, codes.PermissionDenied, "AddMember needs role admin")
		_, err = cl.TransferLeadership(rctx, &pb.TransferLeadershipRequest{})
		wantStatus(t, err, codes.PermissionDenied, "TransferLeadership needs role admin")
	})
	t.Run("append", func(t *testing.T) {
		actx := withToken(ctx, appendTok)
		if _, err := es.Append(actx, oneEvent()); err != nil {
			t.Fatal(err)
		}
		if _, err := es.Status(actx, &pb.StatusRequest{}); err != nil {
			t.Fatal(err)
		}
		_, err := cl.TransferLeadership(actx, &pb.TransferLeadershipRequest{})
		wantStatus(t, err, codes.PermissionDenied, `token "trainer" has role append; /tsstore.v1.Cluster/TransferLeadership needs role admin`)
		_, err = cl.RemoveMember(actx, &pb.RemoveMemberRequest{})
		wantStatus(t, err, codes.PermissionDenied, "needs role admin")
		_, err = cl.Snapshot(actx, &pb.SnapshotRequest{})
		wantStatus(t, err, codes.PermissionDenied, "needs role admin")
		b, err := cl.Backup(actx, &pb.BackupRequest{})
		if err == nil {
			_, err = b.Recv()
		}
		wantStatus(t, err, codes.PermissionDenied, "Backup needs role admin")
	})
	t.Run("admin", func(t *testing.T) {
		actx := withToken(ctx, adminTok)
		resp, err := cl.TransferLeadership(actx, &pb.TransferLeadershipRequest{ToNodeId: "n1"})
		if err != nil || resp.NewLeaderId != "n1" {
			t.Fatalf("TransferLeadership with the admin token: %v %v", resp, err)
		}
		if _, err := es.Append(actx, oneEvent()); err != nil {
			t.Fatal(err)
		}
		_, err = cl.ReadIndex(actx, &pb.ReadIndexRequest{})
		wantStatus(t, err, codes.PermissionDenied, "ReadIndex is for tsstore nodes only")
		_, err = cl.RegisterNode(actx, &pb.RegisterNodeRequest{NodeId: "n1", ApiAddress: "10.9.9.9:1"})
		wantStatus(t, err, codes.PermissionDenied, "RegisterNode is for tsstore nodes only")
	})
	t.Run("health needs no token", func(t *testing.T) {
		if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("reflection needs a token", func(t *testing.T) {
		list := func(ctx context.Context) error {
			s, err := reflectpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
			if err != nil {
				return err
			}
			// A refused stream fails Send with io.EOF; Recv has the status.
			if err := s.Send(&reflectpb.ServerReflectionRequest{MessageRequest: &reflectpb.ServerReflectionRequest_ListServices{}}); err != nil && err != io.EOF {
				return err
			}
			_, err = s.Recv()
			return err
		}
		wantStatus(t, list(ctx), codes.Unauthenticated, "ServerReflectionInfo needs a bearer token")
		if err := list(withToken(ctx, readTok)); err != nil {
			t.Fatal(err)
		}
	})

	// Refused on their headers, before grpc read a body: counted by auth.
	if got := counterValue(t, n.metrics.authRefused.WithLabelValues("Append", "PermissionDenied")); got != 1 {
		t.Errorf("tsstore_auth_refused_total{Append,PermissionDenied} = %v, want 1", got)
	}
	if got := counterValue(t, n.metrics.authRefused.WithLabelValues("Status", "Unauthenticated")); got != 3 {
		t.Errorf("tsstore_auth_refused_total{Status,Unauthenticated} = %v, want 3", got)
	}
	out := logs.String()
	if !strings.Contains(out, "msg=security peer_mtls=true peer_name="+testPeerName+" api_tls=true client_certs=false auth_tokens=3") {
		t.Errorf("start-up log does not describe the security setup:\n%s", out)
	}
	if !strings.Contains(out, "token_name=dashboard") || !strings.Contains(out, "call refused") {
		t.Errorf("refusals not logged by token name:\n%s", out)
	}
	for _, tok := range []string{readTok, appendTok, adminTok} {
		if strings.Contains(out, tok) {
			t.Errorf("the log shows a token")
		}
	}
}

// Nodes call each other as nodes: followers register, forward appends and
// ask the leader for ReadIndex over the peer identity, while clients
// present tokens.
func TestAuthNodeIdentityInCluster(t *testing.T) {
	p := newTestPKI(t)
	tokens := testTokens(t)
	logs := map[string]*logBuf{}
	tc := newTestCluster(t, 3, func(c *Config) { logs[c.NodeID] = p.secure(t, c, true); c.AuthTokensFile = tokens })
	leader, f := tc.leader(), tc.follower() // registration went through RegisterNode as node
	conn := dialWith(t, f.APIAddr(), credentials.NewTLS(trust(t, p.ca, nil)))
	es := pb.NewEventStoreClient(conn)
	ctx := ctxT(t)

	var resp *pb.AppendResponse
	err := retryUnavailable(ctx, func() (err error) {
		resp, err = es.Append(withToken(ctx, appendTok), oneEvent())
		return err
	})
	if err != nil {
		t.Fatalf("append through follower %s: %v", f.cfg.NodeID, err)
	}
	got := 0
	err = retryUnavailable(ctx, func() error {
		stream, err := es.Read(withToken(ctx, readTok), &pb.ReadRequest{
			FromOffset: resp.FirstOffset, ToOffset: resp.LastOffset + 1, Consistency: pb.Consistency_CONSISTENCY_LINEARIZABLE,
		})
		for got = 0; err == nil; {
			var m *pb.ReadResponse
			if m, err = stream.Recv(); err == nil {
				got += len(m.Batches)
			}
		}
		if err == io.EOF {
			return nil
		}
		return err
	})
	if err != nil || got == 0 {
		t.Fatalf("linearizable read on follower: %v, %d batches", err, got)
	}
	for id, l := range logs {
		if out := l.String(); strings.Contains(out, "call refused") {
			t.Fatalf("%s refused a call:\n%s", id, out)
		}
	}
	if n := handledTotal(t, leader, "Append", "OK"); n < 1 && leader.raft.State() == raft.Leader {
		t.Fatalf("leader handled %v forwarded appends, want at least 1", n)
	}
}

// retryUnavailable retries fn while it fails with Unavailable (an
// election on a loaded machine), until ctx ends.
func retryUnavailable(ctx context.Context, fn func() error) error {
	for {
		err := fn()
		if status.Code(err) != codes.Unavailable || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Every method the server registers has a role, and the table names no
// method that does not exist.
func TestAuthMethodTableCoversEveryMethod(t *testing.T) {
	srv := grpc.NewServer()
	(&Node{}).registerAPI(srv)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	reflection.Register(srv)
	seen := map[string]bool{}
	for name, info := range srv.GetServiceInfo() {
		for _, m := range info.Methods {
			full := "/" + name + "/" + m.Name
			seen[full] = true
			if _, ok := methodRoles[full]; !ok && !strings.HasPrefix(full, healthPrefix) {
				t.Errorf("%s has no role in methodRoles (it would need admin)", full)
			}
		}
	}
	for m := range methodRoles {
		if !seen[m] {
			t.Errorf("methodRoles names %s, which the server does not register", m)
		}
	}
}

// A tokens file with a mistake is refused with the line and the problem,
// and without echoing a token.
func TestTokenFileRefusals(t *testing.T) {
	const tok = "0123456789abcdef0123"
	for _, tt := range []struct {
		name, content string
		mode          os.FileMode
		want          string
	}{
		{"unknown role", "reader dash " + tok + "\n", 0o600, `line 1: unknown role "reader" (want read, append or admin)`},
		{"node role is not a token", "node n1 " + tok + "\n", 0o600, `unknown role "node"`},
		{"missing field", "# c\nappend " + tok + "\n", 0o600, "line 2: want `<role> <name> <token or sha256:hex> [append-rate=<bytes/s>]`, got 2 fields"},
		{"bad quota field", "append bulk " + tok + " rate=5MiB\n", 0o600, `line 1 (bulk): fourth field "rate=5MiB": want append-rate=<bytes a second>`},
		{"bad quota", "append bulk " + tok + " append-rate=fast\n", 0o600, `fourth field "append-rate=fast"`},
		{"zero quota", "append bulk " + tok + " append-rate=0\n", 0o600, `fourth field "append-rate=0"`},
		{"short token", "read dash short-token\n", 0o600, "line 1 (dash): token shorter than 16 characters"},
		{"bad hash", "read dash sha256:abcd\n", 0o600, "line 1 (dash): sha256: wants 64 hex digits"},
		{"duplicate name", "read dash " + tok + "\nappend dash x" + tok + "\n", 0o600, `line 2: name "dash" already used on line 1`},
		{"duplicate token", "read dash " + tok + "\nadmin ops " + tok + "\n", 0o600, "line 2 (ops): same token as dash"},
		{"empty", "# nothing\n", 0o600, "has no tokens"},
		{"world-readable plaintext", "read dash " + tok + "\n", 0o644, "holds plaintext tokens and is readable by every user (mode 0644)"},
		{"world-writable", "read dash sha256:" + strings.Repeat("ab", 32) + "\n", 0o602, "is writable by every user (mode 0602)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := writeTokens(t, tt.content)
			if err := os.Chmod(path, tt.mode); err != nil {
				t.Fatal(err)
			}
			_, err := loadTokens(path)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error containing %q", err, tt.want)
			}
			if strings.Contains(err.Error(), tok) {
				t.Fatalf("the error shows the token: %v", err)
			}
		})
	}
}

// Hashed and plaintext entries both authenticate; a world-readable file of
// hashes is fine.
func TestTokenLookup(t *testing.T) {
	path := writeTokens(t, fmt.Sprintf("read dash %s\nadmin ops sha256:%x\n", readTok, sha256.Sum256([]byte(adminTok))))
	os.Chmod(path, 0o600)
	set, err := loadTokens(path)
	if err != nil {
		t.Fatal(err)
	}
	for tok, want := range map[string]string{readTok: "dash/read", adminTok: "ops/admin"} {
		e, ok := set.lookup(tok)
		if !ok || e.name+"/"+e.role.String() != want {
			t.Errorf("lookup: %v %v, want %s", e, ok, want)
		}
	}
	if _, ok := set.lookup(appendTok); ok {
		t.Error("an unknown token was found")
	}
	quota := writeTokens(t, fmt.Sprintf("append bulk %s append-rate=8MiB\n", appendTok))
	os.Chmod(quota, 0o600)
	qs, err := loadTokens(quota)
	if err != nil {
		t.Fatal(err)
	}
	if e, ok := qs.lookup(appendTok); !ok || e.appendRate != 8<<20 {
		t.Errorf("append-rate=8MiB: %+v %v, want a rate of %d", e, ok, 8<<20)
	}
	hashes := writeTokens(t, fmt.Sprintf("admin ops sha256:%x\n", sha256.Sum256([]byte(adminTok))))
	os.Chmod(hashes, 0o644)
	if _, err := loadTokens(hashes); err != nil {
		t.Fatalf("world-readable file of hashes refused: %v", err)
	}
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// One token's Read and Subscribe streams are bounded over all its
// connections (max-streams-per-token), and so, apart, are its
// AppendStreams; another token is not held up by it, and a stream that
// ends gives its place back.
func TestStreamsPerToken(t *testing.T) {
	p := newTestPKI(t)
	tokens := testTokens(t)
	tc := newTestCluster(t, 1, func(c *Config) {
		p.secure(t, c, true)
		c.AuthTokensFile = tokens
		c.MaxStreamsPerToken = 3
	})
	n := tc.nodes[0]
	creds := credentials.NewTLS(trust(t, p.ca, nil))
	conns := []pb.EventStoreClient{
		pb.NewEventStoreClient(dialWith(t, n.APIAddr(), creds)),
		pb.NewEventStoreClient(dialWith(t, n.APIAddr(), creds)),
	}
	if _, err := conns[0].Append(withToken(ctxT(t), appendTok), oneEvent()); err != nil {
		t.Fatal(err)
	}
	// subscribe opens a subscription and waits for its first message, so
	// the node has counted it.
	subscribe := func(es pb.EventStoreClient, token string) (context.CancelFunc, error) {
		ctx, cancel := context.WithCancel(withToken(ctxT(t), token))
		s, err := es.Subscribe(ctx, &pb.ReadRequest{})
		if err == nil {
			_, err = s.Recv()
		}
		if err != nil {
			cancel()
		}
		return cancel, err
	}
	var open []context.CancelFunc
	for i := range 3 { // on both connections
		cancel, err := subscribe(conns[i%2], readTok)
		if err != nil {
			t.Fatalf("subscription %d: %v", i, err)
		}
		open = append(open, cancel)
	}
	_, err := subscribe(conns[1], readTok)
	wantStatus(t, err, codes.ResourceExhausted, `token "dashboard" has 3 Read and Subscribe streams open on node n1 already (max-streams-per-token)`)
	s, err := conns[0].Read(withToken(ctxT(t), readTok), &pb.ReadRequest{})
	if err == nil {
		_, err = s.Recv()
	}
	wantStatus(t, err, codes.ResourceExhausted, "max-streams-per-token")

	cancel, err := subscribe(conns[1], appendTok)
	if err != nil {
		t.Fatalf("another token: %v", err)
	}
	cancel()

	open[0]()
	deadline := time.Now().Add(10 * time.Second)
	for {
		cancel, err := subscribe(conns[0], readTok)
		if err == nil {
			cancel()
			break
		}
		if status.Code(err) != codes.ResourceExhausted || time.Now().After(deadline) {
			t.Fatalf("after one of its streams ended, the token still gets %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, c := range open[1:] {
		c()
	}

	// AppendStreams are counted apart from reads, with the same bound:
	// the read token's streams above take none of the append token's.
	appendStream := func(es pb.EventStoreClient) (context.CancelFunc, error) {
		ctx, cancel := context.WithCancel(withToken(ctxT(t), appendTok))
		s, err := es.AppendStream(ctx)
		if err == nil {
			err = s.Send(&pb.AppendStreamRequest{Id: 1, Append: oneEvent()})
		}
		if err == nil {
			_, err = s.Recv()
		}
		if err != nil {
			cancel()
		}
		return cancel, err
	}
	var appends []context.CancelFunc
	for i := range 3 {
		cancel, err := appendStream(conns[i%2])
		if err != nil {
			t.Fatalf("append stream %d: %v", i, err)
		}
		appends = append(appends, cancel)
	}
	_, err = appendStream(conns[1])
	wantStatus(t, err, codes.ResourceExhausted, `token "trainer" has 3 AppendStreams open on node n1 already (max-streams-per-token)`)
	for _, c := range appends {
		c()
	}
}
