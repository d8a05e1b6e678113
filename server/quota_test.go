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

// A token's requests pass while its balance holds the estimate (its rate,
// at most the largest read) and are settled at their size: a larger one
// leaves a debt the next waits out, counted; a token without a quota never
// waits; a wait ends with its context.
func TestAppendQuotaBalance(t *testing.T) {
	throttled := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "t"}, []string{"token"})
	q := newAppendQuotas(throttled)
	const rate = 1 << 20
	bulk := context.WithValue(context.WithValue(context.Background(), tokenNameKey{}, "bulk"), appendRateKey{}, int64(rate))
	free := context.WithValue(context.Background(), tokenNameKey{}, "free")
	settle, err := q.admit(bulk, 16<<20)
	if err != nil {
		t.Fatal(err)
	}
	settle(rate + 200<<10) // 200 KiB over: a debt
	settle, err = q.admit(free, 16<<20)
	if err != nil {
		t.Fatal(err)
	}
	settle(64 << 20)
	if got := counterValue(t, throttled.WithLabelValues("free")); got != 0 {
		t.Fatalf("a token without a quota waited %v s", got)
	}
	if settle, err = q.admit(bulk, 16<<20); err != nil {
		t.Fatal(err)
	}
	if got := counterValue(t, throttled.WithLabelValues("bulk")); got <= 0 {
		t.Fatal("a token in debt did not wait")
	}
	// The estimate is taken: a concurrent request of the token waits for
	// it, until its context ends.
	ctx, cancel := context.WithCancel(bulk)
	cancel()
	_, err = q.admit(ctx, 16<<20)
	wantStatus(t, err, codes.Canceled, "")
	settle(0)
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
