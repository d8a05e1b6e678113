package server

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/status"
)

// Append quotas per bearer token, as Kafka's produce quotas per user.
//
// The request budgets (reqbudget.go) bound what clients make a node hold,
// not how its append capacity is shared: 20 authenticated clients sending
// 15 MB appends took a well-behaved producer beside them to 1% of its rate
// (docs/benchmarks.md, x with big appenders). A token with
// append-rate=<bytes/s> in the tokens file gets that many bytes of append
// requests a second on each node. A node counts every request of the
// token when it has read it (its real size) and lets it through: the
// token goes into debt. Before it reads the token's next request (a unary
// Append's, or an AppendStream's next message) it waits until the debt is
// paid at the token's rate, so the client is slowed, as Kafka delays its
// answers, and the node holds nothing of the requests it waits to read
// beyond the stream window. A request is never refused for the quota. The
// time spent waiting is counted per token
// (tsstore_append_throttled_seconds_total). Quotas are per node: the SDK
// appends to the leader, so the leader's is the one that binds.

// appendRateKey carries the call's token's append rate (bytes a second)
// in its context (authenticator.authorizeMethod).
type appendRateKey struct{}

// appendRate returns the call's token's append quota, 0 for none.
func appendRate(ctx context.Context) int64 {
	r, _ := ctx.Value(appendRateKey{}).(int64)
	return r
}

// appendQuotas holds each quota'd token's balance on this node.
type appendQuotas struct {
	throttled *prometheus.CounterVec // seconds waited, by token
	mu        sync.Mutex
	balance   map[string]*quotaBalance
}

// quotaBalance is a token bucket that may go into debt: bytes may be
// taken beyond what it holds, and reads wait until it is not negative.
type quotaBalance struct {
	bytes float64   // what the token may still take; negative: its debt
	at    time.Time // when bytes was last brought up to date
}

func newAppendQuotas(throttled *prometheus.CounterVec) *appendQuotas {
	return &appendQuotas{throttled: throttled, balance: map[string]*quotaBalance{}}
}

// refillLocked brings a token's balance up to now at rate, holding at
// most one second's worth (the burst).
func (q *appendQuotas) refillLocked(token string, rate int64, now time.Time) *quotaBalance {
	b := q.balance[token]
	if b == nil {
		b = &quotaBalance{bytes: float64(rate), at: now}
		q.balance[token] = b
	}
	b.bytes = min(float64(rate), b.bytes+now.Sub(b.at).Seconds()*float64(rate))
	b.at = now
	return b
}

// charge takes n bytes of the call's token's quota, if it has one.
func (q *appendQuotas) charge(ctx context.Context, n int64) {
	token, rate := tokenName(ctx), appendRate(ctx)
	if token == "" || rate <= 0 {
		return
	}
	q.mu.Lock()
	q.refillLocked(token, rate, time.Now()).bytes -= float64(n)
	q.mu.Unlock()
}

// wait returns once the call's token has no debt, or with ctx's status
// when ctx ends first.
func (q *appendQuotas) wait(ctx context.Context) error {
	token, rate := tokenName(ctx), appendRate(ctx)
	if token == "" || rate <= 0 {
		return nil
	}
	q.mu.Lock()
	b := q.refillLocked(token, rate, time.Now())
	d := time.Duration(-b.bytes / float64(rate) * float64(time.Second))
	q.mu.Unlock()
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	start := time.Now()
	defer func() { q.throttled.WithLabelValues(token).Add(time.Since(start).Seconds()) }()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	}
}
