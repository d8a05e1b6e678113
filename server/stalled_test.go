package server

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/protobuf/proto"

	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

func heapInuse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// stallReaders opens n Read streams from offset 0 on one HTTP/2
// connection that grants the server large flow-control windows and then
// never reads from its socket: what the node sends fills the socket
// buffers and then waits in the node.
func stallReaders(t *testing.T, addr string, n int, req *pb.ReadRequest) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	body, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	// One gRPC message: not compressed, its length, the request.
	msg := append([]byte{0, byte(len(body) >> 24), byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body))}, body...)
	rawStreams(t, conn, addr, "/tsstore.v1.EventStore/Read", n, msg, true)
	return conn
}

// rawStreams opens n calls of path on conn, each sending data and ending
// its request side if end is set, and never reads anything back.
func rawStreams(t *testing.T, conn net.Conn, addr, path string, n int, data []byte, end bool) {
	t.Helper()
	if _, err := conn.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, conn)
	if err := fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 24}); err != nil {
		t.Fatal(err)
	}
	if err := fr.WriteWindowUpdate(0, 1<<30); err != nil {
		t.Fatal(err)
	}
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for i := range n {
		hb.Reset()
		for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", path},
			{":authority", addr}, {"content-type", "application/grpc"}, {"te", "trailers"}} {
			enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		id := uint32(2*i + 1)
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true}); err != nil {
			t.Fatal(err)
		}
		for rest := data; len(rest) > 0; {
			k := min(len(rest), 16<<10) // the default max frame size
			if err := fr.WriteData(id, end && k == len(rest), rest[:k]); err != nil {
				return // the node reset the stream or the connection: it refused the call
			}
			rest = rest[k:]
		}
	}
}

// 100 Appends without a token that announce 15 MiB and send 8 MiB, then
// stall: the node refuses each on its headers and never reads or
// allocates the body (auth.go, tap handle).
func TestHalfSentUnauthenticatedAppendsCostNothing(t *testing.T) {
	p := newTestPKI(t)
	tokens := testTokens(t)
	tc := newTestCluster(t, 1, func(c *Config) { p.secure(t, c, true); c.AuthTokensFile = tokens })
	n := tc.leader()
	before := heapInuse()
	body := make([]byte, 5+8<<20)
	body[1], body[2], body[3], body[4] = 0, 0xf0, 0, 0 // a 15 MiB message announced, 8 MiB sent
	var conns []net.Conn
	for range 10 {
		cfg := trust(t, p.ca, nil)
		cfg.NextProtos = []string{"h2"}
		conn, err := tls.Dial("tcp", n.APIAddr(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, conn)
		conn.SetWriteDeadline(time.Now().Add(5 * time.Second)) // a node that stops reading must not hang the test
		rawStreams(t, conn, n.APIAddr(), "/tsstore.v1.EventStore/Append", 10, body, false)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	time.Sleep(time.Second) // let the node read what it will read
	grew := int64(heapInuse()) - int64(before)
	t.Logf("100 half-sent (8 of 15 MiB) unauthenticated appends: the node's heap grew %.1f MiB", float64(grew)/(1<<20))
	if grew > 64<<20 {
		t.Fatalf("100 half-sent unauthenticated appends hold %.0f MiB", float64(grew)/(1<<20))
	}
	// The node decides each on its headers as it reads them: on a loaded
	// machine the last ones may come after the second above.
	refused := n.metrics.authRefused.WithLabelValues("Append", "Unauthenticated")
	for deadline := time.Now().Add(10 * time.Second); counterValue(t, refused) != 100; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%v appends refused, want 100", counterValue(t, refused))
		}
	}
}

// Readers that never read cannot make the node hold more than its
// connection's send budget (sendbudget.go): without it, 200 such streams on
// one connection over a 16 MiB log held ~600 MiB of the node's heap. The
// same holds for decoded reads.
func TestStalledReadersAreBounded(t *testing.T) {
	for _, decoded := range []bool{false, true} {
		t.Run(fmt.Sprintf("decoded=%v", decoded), func(t *testing.T) { stalledReadersAreBounded(t, decoded) })
	}
}

// appendBigLog appends a 16 MiB log: 4,000 events of 4,000 bytes, in 40
// appends.
func appendBigLog(t *testing.T, c pb.EventStoreClient) {
	t.Helper()
	payload := strings.Repeat("p", 4000)
	for range 40 {
		var evs []*pb.Event
		for range 100 {
			evs = append(evs, ev("run/big", payload))
		}
		if _, err := c.Append(ctxT(t), &pb.AppendRequest{Events: evs}); err != nil {
			t.Fatal(err)
		}
	}
}

func stalledReadersAreBounded(t *testing.T, decoded bool) {
	tc := newTestCluster(t, 1, func(c *Config) { c.ConnSendBytes = 8 << 20 })
	n := tc.leader()
	c := dial(t, n)
	appendBigLog(t, c)
	before := heapInuse()
	// From offset 0, no filter.
	conn := stallReaders(t, n.APIAddr(), 200, &pb.ReadRequest{Decoded: decoded})
	defer conn.Close()
	deadline := time.Now().Add(10 * time.Second)
	for n.readStreams.Load() < 200 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	// What flow control and the budget let through is sent within moments;
	// give it a second to settle.
	time.Sleep(time.Second)
	grew := int64(heapInuse()) - int64(before)
	t.Logf("%d stalled readers on one connection: the node's heap grew %.1f MiB", n.readStreams.Load(), float64(grew)/(1<<20))
	if got, sent := n.readStreams.Load(), counterValue(t, n.metrics.read.events); got != 200 || sent == 0 {
		t.Fatalf("%d readers served, %v events sent: the test proves nothing", got, sent)
	}
	if grew > 64<<20 {
		t.Fatalf("200 stalled readers hold %.0f MiB; the connection's budget is 8 MiB", float64(grew)/(1<<20))
	}
	// Other connections are served as before.
	if got := readAll(t, c, &pb.ReadRequest{}); len(got) != 4000 {
		t.Fatalf("a read on another connection got %d events", len(got))
	}
}

// A connection whose readers stopped reading holds the node's whole send
// budget: while it is the only reader it is left alone, but once another
// reader waits for the budget, the stalled connection is closed after
// send-stall-timeout (stallcut.go) and the other reader is served.
func TestStalledConnectionIsCutWhenOthersWait(t *testing.T) {
	tc := newTestCluster(t, 1, func(c *Config) {
		c.ConnSendBytes, c.NodeSendBytes = 4<<20, 4<<20
		c.SendStallTimeout = 300 * time.Millisecond
	})
	n := tc.leader()
	c := dial(t, n)
	appendBigLog(t, c)
	stalled := stallReaders(t, n.APIAddr(), 50, &pb.ReadRequest{})
	defer stalled.Close()
	deadline := time.Now().Add(10 * time.Second)
	free := func() int64 {
		n.sendBytes.mu.Lock()
		defer n.sendBytes.mu.Unlock()
		return n.sendBytes.avail
	}
	// Until all 50 are served and no message of 1 MiB (read-message-bytes)
	// fits.
	for n.readStreams.Load() < 50 || free() >= int64(n.cfg.ReadMessageBytes) {
		if time.Now().After(deadline) {
			t.Fatalf("the stalled readers left %d of the node's %d budget bytes", free(), n.sendBytes.size)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Alone, it is not cut, however long it stalls.
	time.Sleep(4 * n.cfg.SendStallTimeout)
	if got := counterValue(t, n.metrics.stalledConnsCut); got != 0 {
		t.Fatalf("%v connections cut while no reader waited", got)
	}
	if got := n.readStreams.Load(); got != 50 {
		t.Fatalf("%d read streams open, want the 50 stalled ones", got)
	}
	// Another reader waits for the budget: the stalled connection goes,
	// and the reader gets the whole log.
	if got := readAll(t, c, &pb.ReadRequest{}); len(got) != 4000 {
		t.Fatalf("a read on another connection got %d events", len(got))
	}
	if got := counterValue(t, n.metrics.stalledConnsCut); got != 1 {
		t.Fatalf("%v connections cut, want the stalled one", got)
	}
	for n.readStreams.Load() != 0 {
		if time.Now().After(deadline.Add(10 * time.Second)) {
			t.Fatalf("%d read streams still open after their connection was closed", n.readStreams.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A Read stream whose client stopped reading holds one message, the one
// in gRPC's hands, and prepares no other until it has left (sendBudget.take);
// when the connection closes, what gRPC held for it is given back.
func TestStalledReaderHoldsOneMessage(t *testing.T) {
	tc := newTestCluster(t, 1, func(c *Config) { c.ConnSendBytes, c.NodeSendBytes = 64<<20, 64<<20 })
	n := tc.leader()
	appendBigLog(t, dial(t, n))
	const streams = 4
	conn := stallReaders(t, n.APIAddr(), streams, &pb.ReadRequest{})
	defer conn.Close()
	budget := func() *byteBudget {
		n.conns.mu.Lock()
		defer n.conns.mu.Unlock()
		if c := n.conns.conns[conn.LocalAddr().String()]; c != nil {
			return c.budget
		}
		return nil
	}
	// Until every stream waits for its last message to leave: the socket
	// buffers are full.
	deadline := time.Now().Add(20 * time.Second)
	for {
		b := budget()
		waiting := 0
		if b != nil {
			b.mu.Lock()
			waiting = len(b.sending)
			b.mu.Unlock()
		}
		if waiting == streams {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d stalled streams wait for their message to leave", waiting, streams)
		}
		time.Sleep(10 * time.Millisecond)
	}
	b := budget()
	b.mu.Lock()
	held := b.size - b.avail
	b.mu.Unlock()
	// One message is at most read-message-bytes of batches (the log's
	// batches are 400 KB) and its framing.
	one := int64(n.cfg.ReadMessageBytes) + 64<<10
	t.Logf("%d stalled streams hold %.2f MiB of the connection's send budget", streams, float64(held)/(1<<20))
	if held > streams*one {
		t.Fatalf("%d stalled streams hold %d bytes, more than one message (%d) each", streams, held, one)
	}
	conn.Close()
	for {
		n.sendBytes.mu.Lock()
		free := n.sendBytes.avail == n.sendBytes.size
		n.sendBytes.mu.Unlock()
		if free && n.readStreams.Load() == 0 {
			break
		}
		if time.Now().After(deadline.Add(10 * time.Second)) {
			t.Fatalf("after the connection closed the node's send budget has %d of %d bytes free", n.sendBytes.avail, n.sendBytes.size)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
