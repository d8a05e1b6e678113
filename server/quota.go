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
// requests a second on each node, with one second's worth as burst. Before
// a node reads the token's next request (a unary Append's, or an
// AppendStream's next message) it waits until the token's balance holds an
// estimate of it (admit), and once read the request is counted at its
// real size (settle): a request larger than the estimate leaves a debt that
// the token's next request waits out. So the client is slowed, as Kafka
// delays its answers, never refused, and the node holds nothing of the
// requests it waits to read beyond the stream window. The time spent
// waiting is counted per token (tsstore_append_throttled_seconds_total).
// Quotas are per node: the SDK appends to the leader, so the leader's is
// the one that binds.

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

// quotaBalance is a token bucket that may go into debt: a request read
// may settle at more than the estimate its admission took, and the next
// admission waits until the balance holds its estimate again.
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

// admit waits until the call's token may send its next request and
// takes an estimate of it from the token's balance: the token's rate
// (one second's worth, at most the largest request, maxRead). settle
// replaces the estimate with the request's real size once it is read (0
// if nothing was). Taking the estimate first is what keeps a token's
// concurrent requests from all passing together once a debt is paid
// (20 big appenders of one token did, and the node read 300 MB at once):
// the next one waits for the estimate to be settled or paid.
func (q *appendQuotas) admit(ctx context.Context, maxRead int64) (settle func(n int64), err error) {
	token, rate := tokenName(ctx), appendRate(ctx)
	if token == "" || rate <= 0 {
		return func(int64) {}, nil
	}
	est := float64(min(rate, maxRead))
	var waited time.Duration
	defer func() {
		if waited > 0 {
			q.throttled.WithLabelValues(token).Add(waited.Seconds())
		}
	}()
	for {
		q.mu.Lock()
		b := q.refillLocked(token, rate, time.Now())
		if b.bytes >= est {
			b.bytes -= est
			q.mu.Unlock()
			return func(n int64) {
				q.mu.Lock()
				b := q.refillLocked(token, rate, time.Now())
				b.bytes = min(float64(rate), b.bytes+est-float64(n))
				q.mu.Unlock()
			}, nil
		}
		d := time.Duration((est - b.bytes) / float64(rate) * float64(time.Second))
		q.mu.Unlock()
		start := time.Now()
		t := time.NewTimer(d)
		select {
		case <-t.C:
			waited += time.Since(start)
		case <-ctx.Done():
			t.Stop()
			waited += time.Since(start)
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
}
