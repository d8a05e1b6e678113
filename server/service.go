package server

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"

	"github.com/tsstore/tsstore/fsm"
	"github.com/tsstore/tsstore/internal/version"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/segment"
)

// forwardedKey marks a request forwarded by another node, so that a
// forwarded request is never forwarded again (no loops during elections).
const forwardedKey = "x-tsstore-forwarded"

type service struct {
	pb.UnimplementedEventStoreServer
	pb.UnimplementedClusterServer
	n *Node
}

func (n *Node) serve() error {
	lis, err := net.Listen("tcp", n.cfg.APIAddr)
	if err != nil {
		return fmt.Errorf("api listen on %s: %w", n.cfg.APIAddr, err)
	}
	n.listener = lis
	lis = n.conns.wrap(lis)
	onPanic := recovery.WithRecoveryHandler(func(p any) error {
		n.logger.Error("panic in handler", "panic", p)
		return status.Errorf(codes.Internal, "internal error: %v", p)
	})
	// Recovery stays outermost, and a second one sits inside the metrics
	// interceptors: a handler panic skips their post-call reporting, so
	// only a recovery inside them makes it count as Internal, with its
	// latency; the outer one still guards the interceptors themselves.
	//
	// Authentication (auth.go), when on, sits inside the metrics
	// interceptors, so refused calls are counted (Unauthenticated,
	// PermissionDenied), and outside the inner recovery.
	codec := n.codec // malformed requests are InvalidArgument (codec.go)
	unary := []grpc.UnaryServerInterceptor{recovery.UnaryServerInterceptor(onPanic), n.metrics.grpc.UnaryServerInterceptor(), codec.unary}
	// Unary Append is served as a stream, which runs the unary chain
	// itself once it has read the request within the request budgets
	// (reqbudget.go): the stream metrics leave it to the unary ones.
	stream := []grpc.StreamServerInterceptor{recovery.StreamServerInterceptor(onPanic), exceptAppend(n.metrics.grpc.StreamServerInterceptor()), codec.stream}
	var tapHandle tap.ServerInHandle
	if n.sec.tokens != nil {
		a := &authenticator{tokens: n.sec.tokens, peerName: n.sec.peerName, logger: n.logger.With("component", "auth"), refused: n.metrics.authRefused}
		u, s := a.interceptors()
		unary, stream = append(unary, u), append(stream, s)
		tapHandle = a.tapHandle
	}
	unary = append(unary, recovery.UnaryServerInterceptor(onPanic))
	stream = append(stream, recovery.StreamServerInterceptor(onPanic))
	n.appendChain = chainUnary(unary)
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(n.cfg.MaxRequestBytes + (1 << 20)),
		grpc.ForceServerCodecV2(codec),
		grpc.MaxConcurrentStreams(n.cfg.MaxStreamsPerConn),
		grpc.StatsHandler(connBudgets{bytes: n.cfg.ConnSendBytes, reqBytes: n.cfg.ConnRequestBytes, conns: n.conns}),
		// Static windows: a call whose request the node has not started to
		// read holds at most RequestWindowBytes; the connection's window
		// bounds no memory (grpc acknowledges it as data arrives), only
		// the rate, so it is BDP's ceiling (reqbudget.go).
		grpc.StaticStreamWindowSize(int32(n.cfg.RequestWindowBytes)),
		grpc.StaticConnWindowSize(16 << 20),
		grpc.ChainUnaryInterceptor(unary...),
		grpc.ChainStreamInterceptor(stream...),
	}
	if tapHandle != nil {
		opts = append(opts, grpc.InTapHandle(tapHandle))
	}
	// Every connection passes the request gate (reqgate.go), above TLS
	// when TLS is on.
	var creds credentials.TransportCredentials
	if n.sec.api != nil {
		creds = loggedCreds{TransportCredentials: credentials.NewTLS(n.sec.api), logger: n.logger.With("component", "api-tls")}
	}
	opts = append(opts, grpc.Creds(newGatedCreds(n, creds)))
	n.grpc = grpc.NewServer(opts...)
	n.registerAPI(n.grpc)
	n.registerHealth()
	reflection.Register(n.grpc)
	n.peers = newPeerPool(n.peerCreds())
	n.goFunc(func() {
		if err := n.grpc.Serve(lis); err != nil {
			n.logger.Error("api server stopped", "error", err)
		}
	})
	return nil
}

// registerAPI registers every tsstore service of n on srv (the auth
// table's test registers them the same way, so none can lack a role).
func (n *Node) registerAPI(srv *grpc.Server) {
	s := &service{n: n}
	srv.RegisterService(appendDesc(), s) // EventStore, unary Append served as a stream (reqbudget.go)
	pb.RegisterClusterServer(srv, s)
	pb.RegisterRunsServer(srv, &runsService{n: n})
	pb.RegisterRepairServer(srv, &repairService{n: n})
	pb.RegisterRetentionServer(srv, &retentionService{n: n})
}

// Append validates a request, forwards it to the leader if this node is
// not the leader, and otherwise proposes it through group commit.
func (s *service) Append(ctx context.Context, req *pb.AppendRequest) (*pb.AppendResponse, error) {
	return s.append(ctx, req)
}

// append decides one append, for Append and for each request of an
// AppendStream (append_stream.go): validation and limits, forwarding to
// the leader, group commit, metrics. Errors are gRPC statuses.
func (s *service) append(ctx context.Context, req *pb.AppendRequest) (_ *pb.AppendResponse, err error) {
	obs := s.n.metrics.startAppend(req)
	defer func() { obs.done(err) }()
	op, size, err := s.toOp(req)
	if err != nil {
		return nil, err
	}
	if s.n.raft.State() != raft.Leader {
		obs.forwarded = true
		return s.forwardAppend(ctx, req)
	}
	if p := s.n.appendDiskProblem(); p != "" {
		return nil, withReason(codes.ResourceExhausted, pb.ErrorReason_ERROR_REASON_DISK_FULL,
			fmt.Sprintf("node %s refuses appends: %s; free space and it resumes by itself", s.n.cfg.NodeID, p), nil)
	}
	res, err := s.n.prop.propose(ctx, op, size)
	if err == nil {
		err = res.Err
	}
	if err != nil {
		return nil, toStatus(err)
	}
	obs.duplicate = res.Duplicate
	resp := &pb.AppendResponse{
		FirstOffset: res.FirstOffset, LastOffset: res.LastOffset, RaftIndex: res.RaftIndex,
		TimestampUnixNano: res.Timestamp, Duplicate: res.Duplicate,
	}
	for stream, v := range res.StreamVersions {
		resp.StreamVersions = append(resp.StreamVersions, &pb.StreamVersion{Stream: stream, Version: v})
	}
	return resp, nil
}

func (s *service) toOp(req *pb.AppendRequest) (fsm.AppendOp, int, error) {
	if len(req.Events) == 0 {
		return fsm.AppendOp{}, 0, invalidArg("append has no events")
	}
	if err := printable("producer id", req.ProducerId); err != nil {
		return fsm.AppendOp{}, 0, err
	}
	op := fsm.AppendOp{ProducerID: req.ProducerId, Seq: req.ProducerSeq, Events: make([]fsm.Event, len(req.Events)), Generation: req.RunGeneration}
	size := len(req.ProducerId)
	for i, ev := range req.Events {
		if n := len(ev.Payload) + len(ev.Metadata); n > s.n.cfg.MaxEventBytes {
			return op, 0, withReason(codes.InvalidArgument, pb.ErrorReason_ERROR_REASON_EVENT_TOO_LARGE,
				fmt.Sprintf("event %d is %d bytes, limit %d", i, n, s.n.cfg.MaxEventBytes),
				map[string]string{"limit_bytes": strconv.Itoa(s.n.cfg.MaxEventBytes), "size_bytes": strconv.Itoa(n)})
		}
		if err := printable(fmt.Sprintf("event %d type", i), ev.Type); err != nil {
			return op, 0, err
		}
		if strings.HasPrefix(ev.Type, "$") {
			return op, 0, invalidArg("event %d: type %q: types beginning with '$' are reserved for the store's own events", i, ev.Type)
		}
		op.Events[i] = fsm.Event{Stream: ev.Stream, Type: ev.Type, Metadata: ev.Metadata, Payload: ev.Payload}
		size += len(ev.Stream) + len(ev.Type) + len(ev.Metadata) + len(ev.Payload) + 16
	}
	if size > s.n.cfg.MaxRequestBytes {
		return op, 0, withReason(codes.InvalidArgument, pb.ErrorReason_ERROR_REASON_REQUEST_TOO_LARGE,
			fmt.Sprintf("append of %d bytes exceeds %d", size, s.n.cfg.MaxRequestBytes),
			map[string]string{"limit_bytes": strconv.Itoa(s.n.cfg.MaxRequestBytes)})
	}
	for _, x := range req.Expectations {
		op.Expect = append(op.Expect, fsm.Expectation{Stream: x.Stream, Kind: fsm.ExpectKind(x.Kind), Version: x.Version})
		size += len(x.Stream) + 16
	}
	if size > s.n.cfg.MaxRequestBytes {
		return op, 0, withReason(codes.InvalidArgument, pb.ErrorReason_ERROR_REASON_REQUEST_TOO_LARGE,
			fmt.Sprintf("append of %d bytes with its expectations exceeds %d", size, s.n.cfg.MaxRequestBytes),
			map[string]string{"limit_bytes": strconv.Itoa(s.n.cfg.MaxRequestBytes)})
	}
	// The end-to-end checksum: checked against the producer's here, then
	// carried in the entry so that every replica checks it before writing.
	op.EventSum, op.HasEventSum = fsm.SumEvents(op.Events), true
	if req.EventsCrc32C != nil && *req.EventsCrc32C != op.EventSum {
		return op, 0, withReason(codes.DataLoss, pb.ErrorReason_ERROR_REASON_CHECKSUM_MISMATCH,
			fmt.Sprintf("the events sum to %08x but the request says %08x: they were damaged on the way; nothing was written, resend", op.EventSum, *req.EventsCrc32C), nil)
	}
	if err := fsm.ValidateOp(&op); err != nil {
		return op, 0, toStatus(err)
	}
	return op, size, nil
}

func (s *service) forwardAppend(ctx context.Context, req *pb.AppendRequest) (*pb.AppendResponse, error) {
	if isForwarded(ctx) {
		return nil, toStatus(fmt.Errorf("%w: forwarded append reached non-leader %s", errNoLeader, s.n.cfg.NodeID))
	}
	conn, err := s.n.leaderConn()
	if err != nil {
		return nil, toStatus(err)
	}
	ctx = metadata.AppendToOutgoingContext(ctx, forwardedKey, s.n.cfg.NodeID)
	return pb.NewEventStoreClient(conn).Append(ctx, req)
}

func isForwarded(ctx context.Context) bool {
	md, _ := metadata.FromIncomingContext(ctx)
	return len(md.Get(forwardedKey)) > 0
}

// behindWait bounds how long a read waits for this node to reach the
// client's min_next_offset when the call itself has no deadline: a node
// cut off from the leader would otherwise hold the reader forever instead
// of letting it resume on another node.
const behindWait = 10 * time.Second

// waitReadable applies the read's consistency rule before serving.
func (n *Node) waitReadable(ctx context.Context, req *pb.ReadRequest) error {
	if _, known := pb.Consistency_name[int32(req.Consistency)]; !known {
		return withReason(codes.InvalidArgument, pb.ErrorReason_ERROR_REASON_INVALID_EVENT,
			fmt.Sprintf("unknown consistency %d", req.Consistency), nil)
	}
	if req.Consistency == pb.Consistency_CONSISTENCY_LINEARIZABLE {
		// A node whose FSM has stopped hands the read over at once; one
		// that is merely behind gets behindWait to catch up.
		if n.health.failed.Load() {
			return status.Errorf(codes.Unavailable, "node %s has stopped applying entries; read from another node", n.cfg.NodeID)
		}
		wctx, cancel := context.WithTimeout(ctx, behindWait)
		defer cancel()
		idx, err := n.readIndex(wctx)
		if err == nil {
			err = n.proc.WaitApplied(wctx, idx)
		}
		if err != nil && ctx.Err() == nil && wctx.Err() != nil {
			return status.Errorf(codes.Unavailable, "node %s has not applied the cluster's commit index %d within %v (applied %d); read from another node",
				n.cfg.NodeID, idx, behindWait, n.proc.AppliedIndex())
		}
		if err != nil {
			return err
		}
	}
	if req.MinNextOffset == 0 || n.proc.NextOffset() >= req.MinNextOffset {
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, behindWait)
	defer cancel()
	err := n.proc.WaitNextOffset(wctx, req.MinNextOffset)
	if err != nil && ctx.Err() == nil {
		return status.Errorf(codes.Unavailable, "node %s is behind: its log ends at offset %d, the reader needs %d; retry on another node",
			n.cfg.NodeID, n.proc.NextOffset(), req.MinNextOffset)
	}
	return err
}

// Status reports this node's view of the cluster.
func (s *service) Status(ctx context.Context, _ *pb.StatusRequest) (*pb.StatusResponse, error) {
	n := s.n
	leaderAddr, leaderID := n.raft.LeaderWithID()
	nodes := n.proc.Nodes()
	resp := &pb.StatusResponse{
		NodeId:                n.cfg.NodeID,
		Version:               version.String(),
		Role:                  roleName(n.raft.State()),
		LeaderId:              string(leaderID),
		LeaderApiAddress:      nodes[string(leaderID)],
		Term:                  n.raft.CurrentTerm(),
		CommitIndex:           n.raft.CommitIndex(),
		AppliedIndex:          n.proc.AppliedIndex(),
		NextOffset:            n.proc.NextOffset(),
		LastTimestampUnixNano: n.proc.LastTimestamp(),
		Incarnation:           n.incarnation,
		LastContactMs:         n.lastContactMs(),
		RaftAppliedIndex:      n.raft.AppliedIndex(),
		DiskProblem:           n.diskProblem(),
	}
	_ = n.proc.WithLog(func(l *segment.Log) error {
		resp.FirstOffset = l.FirstOffset()
		for _, s := range l.Segments() {
			if s.Tiered {
				resp.TierEvictedSegments++
			}
		}
		return nil
	})
	if n.cfg.Tier.Target != nil {
		segs, bytes := n.tierBacklogNow(time.Now())
		resp.TierBacklogSegments, resp.TierBacklogBytes = uint64(segs), uint64(bytes)
	}
	if st := n.raft.Stats(); st != nil {
		resp.LastSnapshotIndex, _ = strconv.ParseUint(st["last_snapshot_index"], 10, 64)
	}
	if f := n.raft.GetConfiguration(); f.Error() == nil {
		for _, srv := range f.Configuration().Servers {
			resp.Nodes = append(resp.Nodes, &pb.NodeStatus{
				Id: string(srv.ID), RaftAddress: string(srv.Address), ApiAddress: nodes[string(srv.ID)],
				Suffrage: suffrageName(srv.Suffrage), Leader: srv.Address == leaderAddr && leaderAddr != "",
			})
		}
	}
	return resp, nil
}

func roleName(s raft.RaftState) string {
	switch s {
	case raft.Leader:
		return "leader"
	case raft.Follower:
		return "follower"
	case raft.Candidate:
		return "candidate"
	}
	return "shutdown"
}

func suffrageName(s raft.ServerSuffrage) string {
	switch s {
	case raft.Voter:
		return "voter"
	case raft.Nonvoter:
		return "nonvoter"
	}
	return "staging"
}

// printable refuses names that a terminal would interpret (control
// characters, ANSI escapes) or that are not UTF-8: event types and
// producer ids are printed by `tsstore read` and in logs. It is checked
// at the edge only, not by the FSM, so entries already in a log are never
// judged by a newer rule.
func printable(what, s string) error {
	if !utf8.ValidString(s) {
		return invalidArg("%s %q is not UTF-8", what, s)
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return invalidArg("%s %q holds the control character %U", what, s, r)
		}
	}
	return nil
}
