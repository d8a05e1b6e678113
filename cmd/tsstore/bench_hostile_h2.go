package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// rawH2 is one client connection of x's hostile clients, spoken in raw
// HTTP/2 frames (golang.org/x/net/http2's framer, as server/stalled_test.go
// does) so that it can do what no gRPC client library does: grant the
// node huge flow-control windows and then never read its socket, or send
// most of a request body and stop. It only ever writes.
type rawH2 struct {
	conn   net.Conn
	fr     *http2.Framer
	hb     bytes.Buffer
	enc    *hpack.Encoder
	addr   string
	scheme string
	next   uint32 // the next client stream id
	dialed time.Time
}

// rawH2Frame is the most DATA bytes per frame: HTTP/2's default
// SETTINGS_MAX_FRAME_SIZE, which gRPC servers keep.
const rawH2Frame = 16 << 10

// dialRawH2 opens a connection to addr (TLS with h2 when tlsCfg is set),
// sends the client preface and grants the server a 16 MiB window per
// stream and 1 GiB for the connection. Writes that block past deadline
// fail: a node that stops reading cannot hang the bench.
func dialRawH2(ctx context.Context, addr string, tlsCfg *tls.Config, deadline time.Time) (*rawH2, error) {
	conn, scheme, err := dialH2(ctx, addr, tlsCfg)
	if err != nil {
		return nil, err
	}
	conn.SetWriteDeadline(deadline)
	r := &rawH2{conn: conn, fr: http2.NewFramer(conn, conn), addr: addr, scheme: scheme, next: 1, dialed: time.Now()}
	r.enc = hpack.NewEncoder(&r.hb)
	if _, err := conn.Write([]byte(http2.ClientPreface)); err != nil {
		conn.Close()
		return nil, err
	}
	if err := r.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 24}); err != nil {
		conn.Close()
		return nil, err
	}
	if err := r.fr.WriteWindowUpdate(0, 1<<30); err != nil {
		conn.Close()
		return nil, err
	}
	return r, nil
}

// call opens one gRPC call of path (with a bearer token unless token is
// empty), sends body in DATA frames and ends the request side if end is
// set. It returns how many body bytes were written before an error: a
// write fails once the node resets the connection, or stops reading it
// until the deadline.
func (r *rawH2) call(path, token string, body []byte, end bool) (int, error) {
	r.hb.Reset()
	fields := [][2]string{{":method", "POST"}, {":scheme", r.scheme}, {":path", path},
		{":authority", r.addr}, {"content-type", "application/grpc"}, {"te", "trailers"}}
	if token != "" {
		fields = append(fields, [2]string{"authorization", "Bearer " + token})
	}
	for _, f := range fields {
		r.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	id := r.next
	r.next += 2
	if err := r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: r.hb.Bytes(), EndHeaders: true}); err != nil {
		return 0, err
	}
	sent := 0
	for sent < len(body) {
		k := min(len(body)-sent, rawH2Frame)
		if err := r.fr.WriteData(id, end && sent+k == len(body), body[sent:sent+k]); err != nil {
			return sent, err
		}
		sent += k
	}
	return sent, nil
}

func (r *rawH2) close() { r.conn.Close() }

// poke writes a connection WINDOW_UPDATE of one byte, which the node
// does not answer: it fails once the node has reset the connection (the
// write after the reset arrived).
func (r *rawH2) poke() error {
	r.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	return r.fr.WriteWindowUpdate(0, 1)
}

// dialH2 opens a connection to addr for HTTP/2: TLS with h2 negotiated
// when tlsCfg is set, else plain TCP; it returns the URL scheme.
func dialH2(ctx context.Context, addr string, tlsCfg *tls.Config) (net.Conn, string, error) {
	if tlsCfg == nil {
		conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		return conn, "http", err
	}
	cfg := tlsCfg.Clone()
	cfg.NextProtos = []string{"h2"}
	d := tls.Dialer{Config: cfg}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, "", err
	}
	if p := conn.(*tls.Conn).ConnectionState().NegotiatedProtocol; p != "h2" {
		conn.Close()
		return nil, "", fmt.Errorf("%s negotiated ALPN %q, not h2", addr, p)
	}
	return conn, "https", nil
}

// grpcFrame is a gRPC length-prefixed message header announcing n bytes
// followed by the first sent bytes of its (zero) body.
func grpcFrame(n, sent int) []byte {
	b := make([]byte, 5+sent)
	b[1], b[2], b[3], b[4] = byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
	return b
}
