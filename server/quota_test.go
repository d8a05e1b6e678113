package server

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"

	"github.com/tsstore/tsstore/client"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
)

// A token over its append quota owes the bytes: the next read of its
// requests waits for the debt, and the wait is counted; a token without a
// quota never waits.
func TestAppendQuotaBalance(t *testing.T) {
	throttled := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "t"}, []string{"token"})
	q := newAppendQuotas(throttled)
	bulk := context.WithValue(context.WithValue(context.Background(), tokenNameKey{}, "bulk"), appendRateKey{}, int64(1<<20))
	free := context.WithValue(context.Background(), tokenNameKey{}, "free")
	if err := q.wait(bulk); err != nil {
		t.Fatal(err)
	}
	q.charge(bulk, 1<<20+200<<10) // one second's burst plus 200 KiB of debt
	q.charge(free, 64<<20)
	if err := q.wait(free); err != nil {
		t.Fatal(err)
	}
	if got := counterValue(t, throttled.WithLabelValues("free")); got != 0 {
		t.Fatalf("a token without a quota waited %v s", got)
	}
	if err := q.wait(bulk); err != nil {
		t.Fatal(err)
	}
	if got := counterValue(t, throttled.WithLabelValues("bulk")); got <= 0 {
		t.Fatal("a token in debt did not wait")
	}
	ctx, cancel := context.WithCancel(bulk)
	q.charge(bulk, 64<<20) // a minute of debt
	cancel()
	wantStatus(t, q.wait(ctx), codes.Canceled, "")
}

// On a node, the appends of a token with append-rate wait for its quota,
// unary and over the SDK's AppendStream alike, and all of them are
// written; another token's appends never wait.
func TestAppendQuotaThrottlesItsToken(t *testing.T) {
	p := newTestPKI(t)
	const bulkTok = "bulk-token-0123456789"
	tokens := writeTokens(t, fmt.Sprintf("append trainer %s\nappend bulk %s append-rate=256KiB\n", appendTok, bulkTok))
	tc := newTestCluster(t, 1, func(c *Config) { p.secure(t, c, true); c.AuthTokensFile = tokens })
	n := tc.leader()
	es := pb.NewEventStoreClient(dialWith(t, n.APIAddr(), credentials.NewTLS(trust(t, p.ca, nil))))
	big := &pb.AppendRequest{Events: []*pb.Event{ev("bulk/a", strings.Repeat("b", 200<<10))}}
	for range 3 { // 600 KiB against 256 KiB a second
		if _, err := es.Append(withToken(ctxT(t), bulkTok), big); err != nil {
			t.Fatal(err)
		}
		if _, err := es.Append(withToken(ctxT(t), appendTok), big); err != nil {
			t.Fatal(err)
		}
	}
	unary := counterValue(t, n.metrics.appendThrottled.WithLabelValues("bulk"))
	if unary <= 0 {
		t.Fatal("the unary appends of a token over its quota never waited")
	}
	if got := counterValue(t, n.metrics.appendThrottled.WithLabelValues("trainer")); got != 0 {
		t.Fatalf("a token without a quota waited %v s", got)
	}

	cfg := client.DefaultConfig(n.APIAddr())
	cfg.TLS = trust(t, p.ca, nil)
	cfg.Token = bulkTok
	c, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	prod := c.NewProducer("bulk-producer")
	for i := range 6 { // 100 KiB each: the SDK streams them
		if _, err := prod.Append(ctxT(t), client.Event{Stream: "bulk/b", Type: "T", Payload: []byte(strings.Repeat(fmt.Sprint(i), 100<<10))}); err != nil {
			t.Fatal(err)
		}
	}
	if got := counterValue(t, n.metrics.appendThrottled.WithLabelValues("bulk")); got <= unary {
		t.Fatal("the streamed appends of a token over its quota never waited")
	}
	if got := n.proc.NextOffset(); got != 12 {
		t.Fatalf("the log holds %d events, want 12: a quota delays appends, it never refuses them", got)
	}
}
