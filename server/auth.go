package server

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/auth"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"

	"github.com/tsstore/tsstore/internal/bytesize"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

// Authentication and authorization of API calls.
//
// With Config.AuthTokensFile set, every call except the health service
// must carry "authorization: Bearer <token>". The token's role must cover
// the method's:
//
//	read    Read, Subscribe, Status, ListStreams, server reflection
//	append  read + Append, AppendStream
//	admin   append + the Cluster service's admin RPCs (membership,
//	        leadership transfer, snapshot, backup) and RepairSegments
//	node    everything, including ReadIndex, RegisterNode and
//	        FetchSegment
//
// The node role is never a token: a call is from a node when it arrived on
// a TLS connection that asked for the peer name (TLSConfig.PeerName) as
// server name, which the API only completes with a node certificate
// verified against the peer CA (tls.go). Nodes are trusted with everything
// because a node certificate already lets its holder replicate Raft
// entries. A follower checks the client's role before it forwards an
// Append or a TransferLeadership; the leader sees the node.
//
// The server keeps only SHA-256 hashes of tokens and compares hashes in
// constant time over all entries; it logs a token's name, never the token.
// Missing or unknown tokens are Unauthenticated, a role too low is
// PermissionDenied naming the role needed. Methods missing from
// methodRoles need admin (fail closed).

// role is what a caller may do; a higher role includes the lower ones.
type role uint8

const (
	roleRead role = iota + 1
	roleAppend
	roleAdmin
	roleNode
)

func (r role) String() string {
	switch r {
	case roleRead:
		return "read"
	case roleAppend:
		return "append"
	case roleAdmin:
		return "admin"
	case roleNode:
		return "node"
	}
	return fmt.Sprintf("role(%d)", uint8(r))
}

// healthPrefix is the service that stays open to probes (systemd, load
// balancers) without a token.
const healthPrefix = "/grpc.health.v1.Health/"

// methodRoles is the least role each API method needs.
var methodRoles = map[string]role{
	pb.EventStore_Read_FullMethodName:        roleRead,
	pb.EventStore_Subscribe_FullMethodName:   roleRead,
	pb.EventStore_Status_FullMethodName:      roleRead,
	pb.EventStore_ListStreams_FullMethodName: roleRead,
	pb.EventStore_Append_FullMethodName:      roleAppend,
	// The whole stream is authorized when it opens; each of its requests
	// is an append.
	pb.EventStore_AppendStream_FullMethodName: roleAppend,

	pb.Cluster_TransferLeadership_FullMethodName: roleAdmin,
	pb.Cluster_Members_FullMethodName:            roleAdmin,
	pb.Cluster_AddMember_FullMethodName:          roleAdmin,
	pb.Cluster_PromoteMember_FullMethodName:      roleAdmin,
	pb.Cluster_RemoveMember_FullMethodName:       roleAdmin,
	pb.Cluster_Snapshot_FullMethodName:           roleAdmin,
	pb.Cluster_Backup_FullMethodName:             roleAdmin,
	pb.Cluster_ReadIndex_FullMethodName:          roleNode,
	pb.Cluster_RegisterNode_FullMethodName:       roleNode,
	pb.Runs_StartRun_FullMethodName:              roleAppend,
	pb.Runs_GetRun_FullMethodName:                roleRead,
	pb.Runs_ListRuns_FullMethodName:              roleRead,
	pb.Runs_GetRunSnapshot_FullMethodName:        roleRead,

	pb.Repair_RepairSegments_FullMethodName: roleAdmin,
	pb.Repair_FetchSegment_FullMethodName:   roleNode,

	pb.Retention_SetRetention_FullMethodName:   roleAdmin,
	pb.Retention_Compact_FullMethodName:        roleAdmin,
	pb.Retention_DeleteStream_FullMethodName:   roleAdmin,
	pb.Retention_ListRetention_FullMethodName:  roleRead,
	pb.Retention_SegmentDigests_FullMethodName: roleRead,
	pb.Retention_VerifyTiered_FullMethodName:   roleRead,

	// Reflection describes the API (its .proto is public) to grpcurl and
	// the like; any valid token may use it.
	"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo":      roleRead,
	"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": roleRead,
}

// tokenEntry is one line of the tokens file, with the token hashed.
type tokenEntry struct {
	name string
	role role
	hash [sha256.Size]byte
	// appendRate is the token's append quota on each node, in bytes of
	// append requests a second (0: none; quota.go).
	appendRate int64
}

// tokenSet is the tokens file's entries; ReloadSecurity swaps the list.
type tokenSet struct {
	list atomic.Pointer[[]tokenEntry]
}

// minTokenLen is the shortest plaintext token accepted: 16 characters of
// `openssl rand -hex 32` output are already 64 bits.
const minTokenLen = 16

// loadTokens reads a tokens file: one token per line,
//
//	<role> <name> <token>           e.g. append trainer-1 4f9c...
//	<role> <name> sha256:<64 hex>   the token's SHA-256 instead
//	... append-rate=<bytes/s>       optional: the token's append quota
//	                                per node (quota.go); KiB, MiB, GiB
//
// with # comments and blank lines. Roles are read, append and admin; names
// (for logs) are unique. A file others may write is refused, and so is a
// file others may read that holds plaintext tokens.
func loadTokens(path string) (*tokenSet, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("auth-tokens-file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("auth-tokens-file: %w", err)
	}
	if fi.Mode().Perm()&0o002 != 0 {
		return nil, fmt.Errorf("auth-tokens-file %s is writable by every user (mode %04o): chmod o-w", path, fi.Mode().Perm())
	}
	var entries []tokenEntry
	names := map[string]int{}
	hashes := map[[sha256.Size]byte]string{}
	plaintext := false
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		// Messages never quote the token field.
		fields := strings.Fields(text)
		if len(fields) != 3 && len(fields) != 4 {
			return nil, fmt.Errorf("auth-tokens-file %s line %d: want `<role> <name> <token or sha256:hex> [append-rate=<bytes/s>]`, got %d fields", path, line, len(fields))
		}
		e := tokenEntry{name: fields[1]}
		if len(fields) == 4 {
			v, ok := strings.CutPrefix(fields[3], "append-rate=")
			rate, err := bytesize.Parse(v)
			if !ok || err != nil || rate <= 0 {
				return nil, fmt.Errorf("auth-tokens-file %s line %d (%s): fourth field %q: want append-rate=<bytes a second>, e.g. append-rate=8MiB", path, line, e.name, fields[3])
			}
			e.appendRate = rate
		}
		switch fields[0] {
		case "read":
			e.role = roleRead
		case "append":
			e.role = roleAppend
		case "admin":
			e.role = roleAdmin
		default:
			return nil, fmt.Errorf("auth-tokens-file %s line %d: unknown role %q (want read, append or admin)", path, line, fields[0])
		}
		if !idPattern.MatchString(e.name) {
			return nil, fmt.Errorf("auth-tokens-file %s line %d: name %q: want 1-64 of [A-Za-z0-9._-]", path, line, e.name)
		}
		if prev, ok := names[e.name]; ok {
			return nil, fmt.Errorf("auth-tokens-file %s line %d: name %q already used on line %d", path, line, e.name, prev)
		}
		names[e.name] = line
		if hx, ok := strings.CutPrefix(fields[2], "sha256:"); ok {
			b, err := hex.DecodeString(hx)
			if err != nil || len(b) != sha256.Size {
				return nil, fmt.Errorf("auth-tokens-file %s line %d (%s): sha256: wants 64 hex digits", path, line, e.name)
			}
			copy(e.hash[:], b)
		} else {
			if len(fields[2]) < minTokenLen {
				return nil, fmt.Errorf("auth-tokens-file %s line %d (%s): token shorter than %d characters", path, line, e.name, minTokenLen)
			}
			e.hash = sha256.Sum256([]byte(fields[2]))
			plaintext = true
		}
		if other, ok := hashes[e.hash]; ok {
			return nil, fmt.Errorf("auth-tokens-file %s line %d (%s): same token as %s", path, line, e.name, other)
		}
		hashes[e.hash] = e.name
		entries = append(entries, e)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("auth-tokens-file %s: %w", path, err)
	}
	if plaintext && fi.Mode().Perm()&0o004 != 0 {
		return nil, fmt.Errorf("auth-tokens-file %s holds plaintext tokens and is readable by every user (mode %04o): chmod o-r, or store sha256: hashes",
			path, fi.Mode().Perm())
	}
	if len(entries) == 0 {
		return nil, fmt.Errorf("auth-tokens-file %s has no tokens: every call would be refused", path)
	}
	set := &tokenSet{}
	set.list.Store(&entries)
	return set, nil
}

// lookup finds the entry of token, comparing its hash with every entry.
func (s *tokenSet) lookup(token string) (tokenEntry, bool) {
	h := sha256.Sum256([]byte(token))
	var found tokenEntry
	ok := 0
	for _, e := range *s.list.Load() {
		if subtle.ConstantTimeCompare(h[:], e.hash[:]) == 1 {
			found, ok = e, 1
		}
	}
	return found, ok == 1
}

// authenticator decides every call when authentication is on.
type authenticator struct {
	tokens   *tokenSet
	peerName string
	logger   *slog.Logger
	refused  *prometheus.CounterVec // by method (short name) and code
}

// interceptors returns the auth interceptors for the server's chain.
func (a *authenticator) interceptors() (grpc.UnaryServerInterceptor, grpc.StreamServerInterceptor) {
	return auth.UnaryServerInterceptor(a.authorize), auth.StreamServerInterceptor(a.authorize)
}

// authorizedKey marks a call the tap handle already let through.
type authorizedKey struct{}

// tapHandle decides a call on its headers alone, when the stream opens and
// before grpc reads (and allocates) any of its request body: a client
// without a valid token cannot make the node hold megabytes of a body it
// sends slowly. grpc answers a refusal with the status at once.
func (a *authenticator) tapHandle(ctx context.Context, info *tap.Info) (context.Context, error) {
	ctx, err := a.authorizeMethod(ctx, info.FullMethodName)
	if err != nil {
		return nil, err
	}
	return context.WithValue(ctx, authorizedKey{}, true), nil
}

// authorize is the auth.AuthFunc of the interceptors: calls the tap
// handle let through pass; it decides any other (defence in depth).
func (a *authenticator) authorize(ctx context.Context) (context.Context, error) {
	if ok, _ := ctx.Value(authorizedKey{}).(bool); ok {
		return ctx, nil
	}
	method, _ := grpc.Method(ctx)
	return a.authorizeMethod(ctx, method)
}

// authorizeMethod lets a call of method through or refuses it.
func (a *authenticator) authorizeMethod(ctx context.Context, method string) (context.Context, error) {
	if strings.HasPrefix(method, healthPrefix) {
		return ctx, nil
	}
	need, ok := methodRoles[method]
	if !ok {
		need = roleAdmin
	}
	if a.fromNode(ctx) {
		return ctx, nil
	}
	if need == roleNode {
		return nil, a.refuse(ctx, codes.PermissionDenied, method, "",
			fmt.Sprintf("%s is for tsstore nodes only (a node certificate under the peer CA)", method))
	}
	token, err := auth.AuthFromMD(ctx, "bearer")
	if err != nil {
		return nil, a.refuse(ctx, codes.Unauthenticated, method, "",
			fmt.Sprintf("%s needs a bearer token with role %s or higher: send the header `authorization: Bearer <token>`", method, need))
	}
	e, ok := a.tokens.lookup(token)
	if !ok {
		return nil, a.refuse(ctx, codes.Unauthenticated, method, "", "bearer token is not in this node's tokens file")
	}
	if e.role < need {
		return nil, a.refuse(ctx, codes.PermissionDenied, method, e.name,
			fmt.Sprintf("token %q has role %s; %s needs role %s or higher", e.name, e.role, method, need))
	}
	ctx = context.WithValue(ctx, tokenNameKey{}, e.name)
	if e.appendRate > 0 {
		ctx = context.WithValue(ctx, appendRateKey{}, e.appendRate)
	}
	return ctx, nil
}

// bearerName is the name of the token an authorization header carries,
// "" for none, an unknown one, or authentication off. The request gate
// (reqgate.go) charges streams by it before grpc has run the auth.
func (n *Node) bearerName(auth string) string {
	scheme, secret, ok := strings.Cut(auth, " ")
	if !ok || !strings.EqualFold(scheme, "bearer") || n.sec.tokens == nil { // as auth.AuthFromMD reads it
		return ""
	}
	e, ok := n.sec.tokens.lookup(secret)
	if !ok {
		return ""
	}
	return e.name
}

// tokenNameKey carries the name of the bearer token a call was let
// through with.
type tokenNameKey struct{}

// tokenName is the name of the call's bearer token, or "" when the call
// carried none (authentication off, or a node's certificate).
func tokenName(ctx context.Context) string {
	name, _ := ctx.Value(tokenNameKey{}).(string)
	return name
}

func (a *authenticator) refuse(ctx context.Context, code codes.Code, method, name, msg string) error {
	remote := ""
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		remote = p.Addr.String()
	}
	a.logger.Warn("call refused", "code", code.String(), "method", method, "token_name", name, "remote", remote, "reason", msg)
	if a.refused != nil {
		a.refused.WithLabelValues(method[strings.LastIndexByte(method, '/')+1:], code.String()).Inc()
	}
	return status.Error(code, msg)
}

// fromNode reports whether the call came over a connection authenticated
// with a node certificate: the peer TLS configuration, chosen by server
// name, completes only with a verified node certificate carrying the peer
// name (tls.go).
func (a *authenticator) fromNode(ctx context.Context) bool {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return false
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return false
	}
	st := info.State
	if st.ServerName != a.peerName || len(st.VerifiedChains) == 0 || len(st.PeerCertificates) == 0 {
		return false
	}
	return st.PeerCertificates[0].VerifyHostname(a.peerName) == nil
}
