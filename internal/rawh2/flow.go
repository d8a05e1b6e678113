// Package rawh2 speaks raw HTTP/2 to a gRPC server, for tests and
// benchmarks that must do what no gRPC client library does: send part of
// a call's message and stall, on many calls at once, while keeping to the
// server's flow-control windows as a real client would (a client that
// oversteps them only gets its streams reset).
package rawh2

import (
	"bytes"
	"net"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// FlowClient is one client connection. It answers the server's SETTINGS,
// follows its WINDOW_UPDATEs and keeps the first DATA frame of each
// stream's answer; it never sends a request's end.
type FlowClient struct {
	conn      net.Conn
	authority string
	scheme    string

	wmu  sync.Mutex // the framer's writes
	fr   *http2.Framer
	hb   bytes.Buffer
	enc  *hpack.Encoder
	next uint32

	mu      sync.Mutex
	conn0   int64            // the connection's send window
	win     map[uint32]int64 // each stream's send window
	answers map[uint32][]byte
	closed  bool
}

// New starts HTTP/2 on conn (already past TLS, with h2 negotiated, if
// any) for calls to authority over scheme ("http" or "https").
func New(conn net.Conn, authority, scheme string) (*FlowClient, error) {
	c := &FlowClient{conn: conn, authority: authority, scheme: scheme, fr: http2.NewFramer(conn, conn), next: 1,
		conn0: 65535, win: map[uint32]int64{}, answers: map[uint32][]byte{}}
	c.enc = hpack.NewEncoder(&c.hb)
	if _, err := conn.Write([]byte(http2.ClientPreface)); err != nil {
		return nil, err
	}
	if err := c.fr.WriteSettings(); err != nil {
		return nil, err
	}
	go c.read()
	return c, nil
}

// LocalAddr is the connection's local address.
func (c *FlowClient) LocalAddr() net.Addr { return c.conn.LocalAddr() }

// Close closes the connection.
func (c *FlowClient) Close() error { return c.conn.Close() }

// Closed reports whether the connection has ended (the server closed it,
// or Close was called).
func (c *FlowClient) Closed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// Answers returns the first DATA frame's bytes of each stream's answer,
// by stream id.
func (c *FlowClient) Answers() map[uint32][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[uint32][]byte, len(c.answers))
	for k, v := range c.answers {
		out[k] = v
	}
	return out
}

func (c *FlowClient) read() {
	defer func() {
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
	}()
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.DataFrame:
			c.mu.Lock()
			if _, ok := c.answers[f.StreamID]; !ok {
				c.answers[f.StreamID] = bytes.Clone(f.Data())
			}
			c.mu.Unlock()
		case *http2.SettingsFrame:
			if !f.IsAck() {
				c.wmu.Lock()
				c.fr.WriteSettingsAck()
				c.wmu.Unlock()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				c.wmu.Lock()
				c.fr.WritePing(true, f.Data)
				c.wmu.Unlock()
			}
		case *http2.WindowUpdateFrame:
			c.mu.Lock()
			if f.StreamID == 0 {
				c.conn0 += int64(f.Increment)
			} else {
				c.win[f.StreamID] += int64(f.Increment)
			}
			c.mu.Unlock()
		}
	}
}

// Message frames body as one uncompressed gRPC message.
func Message(body []byte) []byte {
	n := len(body)
	return append([]byte{0, byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}, body...)
}

// Send opens one call of path per message (with a bearer token unless
// token is empty) and sends each message's first upto bytes, round robin
// as the windows allow, until none can go further for settle or the
// connection fails. It returns the bytes sent and the stream ids, in the
// order of msgs.
func (c *FlowClient) Send(path, token string, msgs [][]byte, upto int, settle time.Duration) (int, []uint32, error) {
	ids := make([]uint32, len(msgs))
	c.wmu.Lock()
	for i := range msgs {
		c.hb.Reset()
		fields := [][2]string{{":method", "POST"}, {":scheme", c.scheme}, {":path", path},
			{":authority", c.authority}, {"content-type", "application/grpc"}, {"te", "trailers"}}
		if token != "" {
			fields = append(fields, [2]string{"authorization", "Bearer " + token})
		}
		for _, f := range fields {
			c.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		ids[i] = c.next
		c.next += 2
		c.mu.Lock()
		c.win[ids[i]] += 65535 // HTTP/2's initial window, until SETTINGS say more
		c.mu.Unlock()
		if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: ids[i], BlockFragment: c.hb.Bytes(), EndHeaders: true}); err != nil {
			c.wmu.Unlock()
			return 0, ids, err
		}
	}
	c.wmu.Unlock()
	sent := make([]int, len(msgs))
	total := 0
	for last := time.Now(); time.Since(last) < settle; {
		progress := false
		for i, m := range msgs {
			c.mu.Lock()
			k := int(min(c.win[ids[i]], c.conn0, 16<<10, int64(min(upto, len(m))-sent[i])))
			if k > 0 {
				c.win[ids[i]] -= int64(k)
				c.conn0 -= int64(k)
			}
			c.mu.Unlock()
			if k <= 0 {
				continue
			}
			c.wmu.Lock()
			err := c.fr.WriteData(ids[i], false, m[sent[i]:sent[i]+k])
			c.wmu.Unlock()
			if err != nil {
				return total, ids, err
			}
			sent[i] += k
			total += k
			progress = true
		}
		if progress {
			last = time.Now()
			continue
		}
		if c.Closed() {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	return total, ids, nil
}
