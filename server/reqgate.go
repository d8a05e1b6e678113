package server

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"sync"

	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

// The request gate bounds the one message a streaming call (AppendStream)
// is reading by the connection's and the node's request budgets, as
// serveAppend bounds a unary Append's (reqbudget.go).
//
// grpc-go gives a handler no hook between a message's 5-byte prefix and
// its body: the handler's Recv reads the prefix, opens the stream's
// flow-control window to the length it announces (up to MaxRecvMsgSize)
// and reads the body, and MaxRecvMsgSize is one value for every method. A
// reservation taken before Recv would be held by every idle stream (the
// SDK keeps one AppendStream per connection open), so without the gate
// each open AppendStream could make the node hold one largest request
// (max-request-bytes + 1 MiB) that no budget counted.
//
// So the node follows the HTTP/2 frames of each client connection as they
// pass between the socket and grpc, above TLS. HEADERS tell it each
// stream's method (HPACK-decoded, in step with grpc's decoder), and DATA
// carry each stream's gRPC message prefixes. When a prefix announces a
// message larger than the static stream window (Config.RequestWindowBytes),
// the gate reserves the message's size from the connection's and the
// node's request budgets. If they have no room, the stream is blocked: the
// node's WINDOW_UPDATEs for it are held back, so the client can send no
// more than the window it had, while the reservation waits in line; once
// it is taken, the held window goes out. The wait has no bound of its own:
// unlike a unary read, whose wait ends in ResourceExhausted after
// requestReadWait, a blocked stream cannot be answered alone (its answer
// needs the message the node has not read), and closing its connection
// would end the client's other calls too. It holds only its window
// meanwhile; the client's deadline or cancel ends it, and the stall cut
// frees the room that stalled messages hold. Blocking a stream's window rather than the
// connection's reads leaves the connection's other streams free to finish,
// so they give their reservations back: a read stopped at one prefix
// would wait for room held by messages whose rest sits behind it on the
// socket.
//
// The reservation ends when the message's last byte has passed to grpc
// (the handler then counts the request at its real size until it is
// answered, as before), or when the stream ends. Once the node opens the
// stream's window for it (its handler reads it), the connection counts as
// receiving a request, so the stall and trickle cuts (stallcut.go) close
// one whose message stalls while others wait; before that the node is
// what waits (a handler busy with earlier requests, or the token's append
// quota), and the sender is not judged.
//
// Unary Append is left to serveAppend, which reserves before it reads.
// Smaller messages are bounded by the stream window, which grpc opens
// further only as its handler reads. The node's own frames also tell the
// gate when a stream ends (the handler's trailers, or a reset), so it
// keeps state only for open streams whatever the client does.

// gatedCreds wraps the API's transport credentials (TLS, or none) so
// that the gate sees each connection's bytes in the clear.
type gatedCreds struct {
	credentials.TransportCredentials
	n *Node
}

func newGatedCreds(n *Node, inner credentials.TransportCredentials) gatedCreds {
	if inner == nil {
		inner = insecure.NewCredentials()
	}
	return gatedCreds{TransportCredentials: inner, n: n}
}

func (c gatedCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		return conn, info, err
	}
	if c.n.cfg.NoRequestGate {
		return conn, info, nil
	}
	tc, _ := raw.(*trackedConn)
	return c.n.gateConn(conn, tc), info, nil
}

func (c gatedCreds) Clone() credentials.TransportCredentials {
	return gatedCreds{TransportCredentials: c.TransportCredentials.Clone(), n: c.n}
}

// gateBudget is what the gate reserves messages from.
type gateBudget interface {
	// try reserves size bytes for a stream whose authorization header is
	// auth if there is room now and nobody waits.
	try(auth string, size int64) (msgHold, bool)
	// wait reserves size bytes, waiting in line until there is room or
	// ctx ends.
	wait(ctx context.Context, auth string, size int64) (msgHold, error)
}

// msgHold is one message's reservation.
type msgHold struct {
	release func()
	// receiving notes that the node reads the message (it opened the
	// stream's window): from then on the stall cut may judge its sender.
	receiving func()
}

// nodeGateBudget is a connection's and its node's request budgets.
type nodeGateBudget struct {
	n  *Node
	tc *trackedConn // carries the connection's budget, once grpc tagged it
}

// charge is a charge on the budgets of the stream's token (from its
// authorization header), its connection and the node.
func (b nodeGateBudget) charge(auth string) *requestCharge {
	var conn *requestBudget
	if b.tc != nil {
		b.tc.t.mu.Lock()
		conn = b.tc.requestBudgetLocked(b.n.cfg.ConnRequestBytes)
		b.tc.t.mu.Unlock()
	}
	c := b.n.chargeFor(b.n.bearerName(auth), conn)
	c.lateReceive = true
	return c
}

func (b nodeGateBudget) try(auth string, size int64) (msgHold, bool) {
	if size > b.n.maxRequestRead() {
		return msgHold{release: func() {}, receiving: func() {}}, true // grpc refuses it before it reads the body
	}
	c := b.charge(auth)
	if !c.tryReadN(size) {
		return msgHold{}, false
	}
	return msgHold{release: c.endRead, receiving: c.markReceiving}, true
}

func (b nodeGateBudget) wait(ctx context.Context, auth string, size int64) (msgHold, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { // a node that drains stops waiting
		select {
		case <-b.n.draining:
			cancel()
		case <-ctx.Done():
		}
	}()
	c := b.charge(auth)
	if err := c.startReadN(ctx, size, 0); err != nil {
		return msgHold{}, err
	}
	return msgHold{release: c.endRead, receiving: c.markReceiving}, nil
}

// gateConn returns conn with its requests gated; tc, if set, is the
// tracked connection that carries its request budget.
func (n *Node) gateConn(conn net.Conn, tc *trackedConn) net.Conn {
	g := &gatedConn{Conn: conn}
	g.scan = newH2Scan(int64(n.cfg.RequestWindowBytes), nodeGateBudget{n: n, tc: tc}, g.inject, func(err error) {
		// A wait ends unserved only as the node drains: its calls end
		// with the connection, as Close ends the others.
		select {
		case <-n.draining:
		default:
			n.logger.Warn("closing a client connection: a streaming call's message could not be reserved from the request budgets",
				"remote", conn.RemoteAddr().String(), "error", err)
		}
		conn.Close()
	})
	return g
}

// gatedConn is an API connection whose frames pass the gate.
type gatedConn struct {
	net.Conn
	scan *h2Scan
	wmu  sync.Mutex // the node's writes: grpc's, and the gate's own
}

func (c *gatedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		if gerr := c.scan.client(p[:n]); gerr != nil {
			c.scan.close()
			return 0, gerr
		}
	}
	return n, err
}

func (c *gatedConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	out := c.scan.server(p)
	if len(out) > 0 {
		if _, err := c.Conn.Write(out); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// inject writes a frame of the gate's own at the next frame boundary of
// what the node writes.
func (c *gatedConn) inject(frame []byte) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.scan.out.left > 0 { // in the middle of a frame: the next Write
		c.scan.pending = append(c.scan.pending, frame...)
		return
	}
	c.Conn.Write(frame) // an error shows on grpc's next read or write
}

func (c *gatedConn) Close() error {
	c.scan.close()
	return c.Conn.Close()
}

// errGateBroken closes a connection whose frames the gate cannot follow;
// grpc would refuse them too (a protocol or compression error).
var errGateBroken = errors.New("request gate: malformed HTTP/2 from the client")

// HTTP/2 framing (RFC 9113, section 4.1) as far as the gate needs it.
const (
	h2FrameData         = 0x0
	h2FrameHeaders      = 0x1
	h2FrameRSTStream    = 0x3
	h2FrameWindowUpdate = 0x8
	h2FrameContinuation = 0x9

	h2FlagEndStream  = 0x1
	h2FlagEndHeaders = 0x4
	h2FlagPadded     = 0x8
	h2FlagPriority   = 0x20

	h2ClientPreface = len("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
	// h2MaxHeaderBlock bounds a header block the gate assembles; no
	// gRPC client sends one near it.
	h2MaxHeaderBlock = 1 << 20
)

// gateUngated is the one method whose messages the gate leaves to its
// handler (serveAppend reserves before it reads).
const gateUngated = pb.EventStore_Append_FullMethodName

// h2Frames follows the frames a client sends, byte by byte as they pass.
type h2Frames struct {
	skip  int // bytes to pass before the next frame header (the preface)
	hdr   [9]byte
	hdrN  int
	typ   byte
	flags byte
	sid   uint32
	left  int // payload bytes of the current frame still to come
	// Payload stages of padded DATA and HEADERS frames.
	padStage bool // the next byte is the pad length
	prio     int  // priority bytes still to skip (HEADERS)
	content  int  // content bytes still to come; the rest is padding
}

// gateStream is a gated stream's message framing.
type gateStream struct {
	auth   string // its authorization header: the token charged
	pfx    [5]byte
	pfxN   int
	left   uint32 // body bytes of the current message still to come
	inBody bool
	msg    int // counts the stream's reserved messages
	// Under h2Scan.mu:
	hold    msgHold            // the current message's reservation
	read    bool               // the node opened its window: hold.receiving called
	blocked bool               // its reservation waits: window held back
	cancel  context.CancelFunc // ends the wait
	owed    uint32             // window increments held back
}

// h2Out follows the frames the node writes, holding back an incomplete
// frame header until it shows whether the frame goes out.
type h2Out struct {
	hdr  [9]byte
	hdrN int
	left int  // payload bytes of the current frame still to pass
	drop bool // the current frame is a held-back WINDOW_UPDATE
	inc  [4]byte
	incN int
}

// h2Scan is one connection's gate state.
type h2Scan struct {
	threshold int64
	budget    gateBudget
	inject    func(frame []byte)
	fail      func(error) // a wait ended unserved other than by its stream's end (the node drains)

	in    h2Frames // client to node
	block []byte   // header block being assembled
	dec   *hpack.Decoder
	path  string
	auth  string

	// The node's side, under gatedConn.wmu.
	out     h2Out
	pending []byte // frames to inject at the next frame boundary
	obuf    []byte

	mu      sync.Mutex
	streams map[uint32]*gateStream
	closed  bool
}

func newH2Scan(threshold int64, budget gateBudget, inject func([]byte), fail func(error)) *h2Scan {
	s := &h2Scan{threshold: threshold, budget: budget, inject: inject, fail: fail, streams: map[uint32]*gateStream{}}
	s.in.skip = h2ClientPreface
	// grpc's server leaves SETTINGS_HEADER_TABLE_SIZE at its default.
	s.dec = hpack.NewDecoder(4096, func(f hpack.HeaderField) {
		switch f.Name {
		case ":path":
			s.path = f.Value
		case "authorization":
			s.auth = f.Value
		}
	})
	return s
}

// next feeds p through f's framing: it calls frame at each frame header
// (after its 9 bytes), payload with each run of payload bytes (content:
// not padding, pad length or priority), and end at each frame's end. It
// returns the first error of a callback.
func (f *h2Frames) next(p []byte, frame func() error, payload func([]byte) error, end func() error) error {
	for len(p) > 0 {
		if f.skip > 0 {
			k := min(f.skip, len(p))
			f.skip -= k
			p = p[k:]
			continue
		}
		if f.left == 0 && f.hdrN < 9 {
			k := copy(f.hdr[f.hdrN:], p)
			f.hdrN += k
			p = p[k:]
			if f.hdrN < 9 {
				return nil
			}
			f.left = int(f.hdr[0])<<16 | int(f.hdr[1])<<8 | int(f.hdr[2])
			f.typ, f.flags = f.hdr[3], f.hdr[4]
			f.sid = binary.BigEndian.Uint32(f.hdr[5:]) & 0x7fffffff
			f.padStage = f.flags&h2FlagPadded != 0 && (f.typ == h2FrameData || f.typ == h2FrameHeaders)
			f.prio = 0
			if f.typ == h2FrameHeaders && f.flags&h2FlagPriority != 0 {
				f.prio = 5
			}
			f.content = f.left
			if !f.padStage {
				f.content -= f.prio
			}
			if f.content < 0 {
				return errGateBroken
			}
			if err := frame(); err != nil {
				return err
			}
			if f.left == 0 {
				f.hdrN = 0
				if f.padStage || f.prio > 0 {
					return errGateBroken
				}
				if err := end(); err != nil {
					return err
				}
			}
			continue
		}
		switch {
		case f.padStage:
			pad := int(p[0])
			p, f.left, f.padStage = p[1:], f.left-1, false
			f.content = f.left - pad - f.prio
			if f.content < 0 {
				return errGateBroken
			}
		case f.prio > 0:
			k := min(f.prio, len(p))
			p, f.left, f.prio = p[k:], f.left-k, f.prio-k
		default:
			k := min(f.left, len(p))
			c := min(f.content, k)
			if c > 0 {
				if err := payload(p[:c]); err != nil {
					return err
				}
				f.content -= c
			}
			p, f.left = p[k:], f.left-k
		}
		if f.left == 0 {
			f.hdrN = 0
			if err := end(); err != nil {
				return err
			}
		}
	}
	return nil
}

// client follows the bytes a client sent; it never waits.
func (s *h2Scan) client(p []byte) error {
	f := &s.in
	return f.next(p, func() error {
		if f.typ == h2FrameHeaders {
			s.block = s.block[:0]
		}
		return nil
	}, func(b []byte) error {
		switch f.typ {
		case h2FrameHeaders, h2FrameContinuation:
			if len(s.block)+len(b) > h2MaxHeaderBlock {
				return errGateBroken
			}
			s.block = append(s.block, b...)
		case h2FrameData:
			s.data(f.sid, b)
		}
		return nil
	}, func() error {
		switch f.typ {
		case h2FrameHeaders, h2FrameContinuation:
			if f.flags&h2FlagEndHeaders == 0 {
				return nil
			}
			return s.headers(f.sid, f.typ == h2FrameHeaders && f.flags&h2FlagEndStream != 0)
		case h2FrameData:
			if f.flags&h2FlagEndStream != 0 {
				s.drop(f.sid)
			}
		case h2FrameRSTStream:
			s.drop(f.sid)
		}
		return nil
	})
}

// headers decodes a complete header block of stream sid, as grpc does,
// and gates the stream unless its method is ungated.
func (s *h2Scan) headers(sid uint32, endStream bool) error {
	s.path, s.auth = "", ""
	if _, err := s.dec.Write(s.block); err != nil {
		return errGateBroken
	}
	if err := s.dec.Close(); err != nil {
		return errGateBroken
	}
	if cap(s.block) > 64<<10 { // a rare large block: not kept
		s.block = nil
	}
	if endStream { // trailers end the client's side; a request without a body opens nothing
		s.drop(sid)
		return nil
	}
	if s.path == "" || s.path == gateUngated {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed && s.streams[sid] == nil {
		s.streams[sid] = &gateStream{auth: s.auth}
	}
	return nil
}

// data follows stream sid's gRPC messages through b.
func (s *h2Scan) data(sid uint32, b []byte) {
	s.mu.Lock()
	st := s.streams[sid]
	s.mu.Unlock()
	if st == nil {
		return
	}
	for len(b) > 0 {
		if !st.inBody {
			k := copy(st.pfx[st.pfxN:], b)
			st.pfxN += k
			b = b[k:]
			if st.pfxN < len(st.pfx) {
				return
			}
			st.pfxN = 0
			size := binary.BigEndian.Uint32(st.pfx[1:])
			if size == 0 {
				continue
			}
			st.inBody, st.left = true, size
			if int64(size) > s.threshold {
				s.reserve(sid, st, int64(size)+grpcFrameBytes)
			}
			continue
		}
		k := min(uint32(len(b)), st.left)
		st.left -= k
		b = b[k:]
		if st.left == 0 {
			st.inBody = false
			s.mu.Lock()
			release := st.hold.release
			st.hold, st.read = msgHold{}, false
			var owed uint32
			if st.blocked { // passed before its reservation came
				st.cancel()
				st.blocked, st.cancel = false, nil
				owed, st.owed = st.owed, 0
			}
			s.mu.Unlock()
			if release != nil {
				release()
			}
			if owed > 0 {
				s.inject(windowUpdate(sid, owed))
			}
		}
	}
}

// reserve takes size bytes for stream sid's new message, at once if
// there is room, else by blocking the stream until there is.
func (s *h2Scan) reserve(sid uint32, st *gateStream, size int64) {
	if hold, ok := s.budget.try(st.auth, size); ok {
		s.mu.Lock()
		if s.closed || s.streams[sid] != st { // ended meanwhile (the node's trailers)
			s.mu.Unlock()
			hold.release()
			return
		}
		st.hold = hold
		s.mu.Unlock()
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.mu.Lock()
	st.msg++
	msg := st.msg
	st.blocked, st.cancel = true, cancel
	s.mu.Unlock()
	go func() {
		hold, err := s.budget.wait(ctx, st.auth, size)
		s.admitted(ctx, sid, st, msg, hold, err)
	}()
}

// admitted ends stream sid's wait for its message msg's reservation.
func (s *h2Scan) admitted(ctx context.Context, sid uint32, st *gateStream, msg int, hold msgHold, err error) {
	s.mu.Lock()
	current := !s.closed && s.streams[sid] == st && st.blocked && st.msg == msg
	if !current || err != nil {
		s.mu.Unlock()
		if hold.release != nil {
			hold.release()
		}
		if current && ctx.Err() == nil {
			s.fail(err)
		}
		return
	}
	st.blocked, st.cancel = false, nil
	st.hold = hold
	owed := st.owed
	st.owed = 0
	if owed > 0 { // the node has asked for the message: it is read once the window goes out
		st.read = true
		hold.receiving()
	}
	s.mu.Unlock()
	if owed > 0 {
		s.inject(windowUpdate(sid, owed))
	}
}

// drop forgets stream sid, giving back its reservation.
func (s *h2Scan) drop(sid uint32) {
	s.mu.Lock()
	st := s.streams[sid]
	delete(s.streams, sid)
	var release func()
	if st != nil {
		release = st.hold.release
		st.hold, st.read = msgHold{}, false
		if st.cancel != nil {
			st.cancel()
		}
	}
	s.mu.Unlock()
	if release != nil {
		release()
	}
}

// holdWindow reports whether a WINDOW_UPDATE of inc for stream sid is
// held back (the stream is blocked), and if so owes it.
func (s *h2Scan) holdWindow(sid, inc uint32) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.streams[sid]
	if st == nil || !st.blocked {
		return false
	}
	st.owed = min(st.owed+inc, 1<<31-1)
	return true
}

// windowFor decides a WINDOW_UPDATE the node writes for stream sid, in
// one look at the stream: it reports whether the frame is held back (the
// stream is blocked); if not, the node reads its reserved message, whose
// sender the stall cut may judge from now on.
func (s *h2Scan) windowFor(sid uint32) (hold bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.streams[sid]
	if st == nil {
		return false
	}
	if st.blocked {
		return true
	}
	s.openedLocked(st)
	return false
}

// windowOpened notes a WINDOW_UPDATE for stream sid that goes out after
// being held back (windowFor).
func (s *h2Scan) windowOpened(sid uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.streams[sid]; st != nil {
		s.openedLocked(st)
	}
}

func (s *h2Scan) openedLocked(st *gateStream) {
	if st.hold.receiving != nil && !st.read {
		st.read = true
		st.hold.receiving()
	}
}

// server returns what of the node's bytes p goes to the client now: p
// less the WINDOW_UPDATEs of blocked streams and an incomplete frame
// header at its end (kept for the next call), plus a header kept from the
// last call and frames to inject. It also notes the streams that end. The
// caller holds gatedConn.wmu.
func (s *h2Scan) server(p []byte) []byte {
	o := &s.out
	var out []byte       // what goes out, once dirty
	dirty := false       // else p goes out as it is
	run := 0             // start of p's bytes not yet in out
	cut := func(i int) { // p[run:i] goes out, then what out takes
		if !dirty {
			out, dirty = s.obuf[:0], true
		}
		out = append(out, p[run:i]...)
		run = i
	}
	atBoundary := func(i int) {
		if len(s.pending) > 0 {
			cut(i)
			out = append(out, s.pending...)
			s.pending = s.pending[:0]
		}
	}
	if o.left == 0 && o.hdrN == 0 && !o.drop {
		atBoundary(0)
	}
	for i := 0; i < len(p); {
		switch {
		case o.drop: // a held-back WINDOW_UPDATE's payload
			cut(i)
			k := copy(o.inc[o.incN:], p[i:])
			o.incN += k
			i += k
			run = i
			if o.incN == 4 {
				o.drop = false
				sid, inc := o.sid(), binary.BigEndian.Uint32(o.inc[:])&0x7fffffff
				if !s.holdWindow(sid, inc) { // unblocked meanwhile: it goes out
					out = append(out, windowUpdate(sid, inc)...)
					s.windowOpened(sid)
				}
				atBoundary(i)
			}
		case o.left > 0:
			k := min(o.left, len(p)-i)
			o.left -= k
			i += k
			if o.left == 0 {
				atBoundary(i)
			}
		default:
			start := max(i-o.hdrN, 0) // where the header's bytes in p begin
			held := o.hdrN            // header bytes kept from the last call
			k := copy(o.hdr[o.hdrN:], p[i:])
			o.hdrN += k
			i += k
			if o.hdrN < 9 { // keep it for the next call
				cut(start)
				run = len(p)
				continue
			}
			o.hdrN = 0
			length := int(o.hdr[0])<<16 | int(o.hdr[1])<<8 | int(o.hdr[2])
			typ, flags, sid := o.hdr[3], o.hdr[4], o.sid()
			if typ == h2FrameRSTStream || (typ == h2FrameHeaders || typ == h2FrameData) && flags&h2FlagEndStream != 0 {
				s.drop(sid)
			}
			if typ == h2FrameWindowUpdate && sid != 0 && length == 4 && s.windowFor(sid) {
				cut(start)
				run = i
				o.drop, o.incN = true, 0
				continue
			}
			if held > 0 { // the kept part goes out before the rest
				cut(start)
				out = append(out, o.hdr[:held]...)
			}
			o.left = length
			if length == 0 {
				atBoundary(i)
			}
		}
	}
	if !dirty {
		return p
	}
	out = append(out, p[run:]...)
	s.obuf = out[:0]
	return out
}

// windowUpdate is a WINDOW_UPDATE frame of inc for stream sid.
func windowUpdate(sid, inc uint32) []byte {
	f := make([]byte, 13)
	f[2], f[3] = 4, h2FrameWindowUpdate
	binary.BigEndian.PutUint32(f[5:], sid)
	binary.BigEndian.PutUint32(f[9:], inc)
	return f
}

func (o *h2Out) sid() uint32 { return binary.BigEndian.Uint32(o.hdr[5:]) & 0x7fffffff }

// close gives back every reservation; the connection is gone.
func (s *h2Scan) close() {
	s.mu.Lock()
	var rel []func()
	for _, st := range s.streams {
		if st.hold.release != nil {
			rel = append(rel, st.hold.release)
			st.hold = msgHold{}
		}
		if st.cancel != nil {
			st.cancel()
		}
	}
	s.streams = map[uint32]*gateStream{}
	s.closed = true
	s.mu.Unlock()
	for _, r := range rel {
		r()
	}
}
