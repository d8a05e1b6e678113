package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// etcdSys is a three-member etcd cluster. Every event is one key,
// ev/<stream>/<seq as 16 hex digits>, so a key range over a stream's
// prefix is in write order; the workloads a, b, c and f write under w/.
type etcdSys struct {
	cl        *clientv3.Client
	endpoints []string
	opTimeout time.Duration
	txnOps    int
	seq       atomic.Int64
	loadRev   int64 // revision of the first loaded event
	loaded    int
}

func newEtcd(ctx context.Context, endpoints string, opTimeout time.Duration, txnOps int) (*etcdSys, error) {
	eps := strings.Split(endpoints, ",")
	cl, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		MaxCallRecvMsgSize: 256 << 20})
	if err != nil {
		return nil, err
	}
	s := &etcdSys{cl: cl, endpoints: eps, opTimeout: opTimeout, txnOps: txnOps}
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err = cl.Put(c, "bench/ready", "1")
		cancel()
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err != nil {
		cl.Close()
		return nil, fmt.Errorf("etcd not ready: %w", err)
	}
	return s, nil
}

func (s *etcdSys) Close() { s.cl.Close() }

func (s *etcdSys) key(prefix, stream string) string {
	return fmt.Sprintf("%s/%s/%016x", prefix, stream, s.seq.Add(1))
}

// Append puts one key. WithRequireLeader makes a member without a leader
// fail the request at once instead of holding it, as during an election.
func (s *etcdSys) Append(ctx context.Context, stream string, payload []byte) error {
	ctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), s.opTimeout)
	defer cancel()
	_, err := s.cl.Put(ctx, s.key("w", stream), string(payload))
	return err
}

// txns writes Txns of up to txnOps Puts, inflight at a time from one
// client, until keys says stop or d passes (0: no limit). Every event of
// a Txn gets the Txn's latency.
func (s *etcdSys) txns(ctx context.Context, inflight int, payload []byte, d time.Duration, keys func(i int) (string, bool)) (int, []time.Duration, int64, error) {
	var mu sync.Mutex
	var lats []time.Duration
	var firstRev int64
	var firstErr error
	next := 0
	stop := false
	var end time.Time
	if d > 0 {
		end = time.Now().Add(d)
	}
	val := string(payload)
	var wg sync.WaitGroup
	for range inflight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ops := make([]clientv3.Op, 0, s.txnOps)
			for {
				ops = ops[:0]
				mu.Lock()
				if !end.IsZero() && time.Now().After(end) {
					stop = true
				}
				for !stop && len(ops) < s.txnOps {
					k, ok := keys(next)
					if !ok {
						stop = true
						break
					}
					next++
					ops = append(ops, clientv3.OpPut(k, val))
				}
				mu.Unlock()
				if len(ops) == 0 || ctx.Err() != nil {
					return
				}
				c, cancel := context.WithTimeout(ctx, 30*time.Second)
				t0 := time.Now()
				resp, err := s.cl.Txn(c).Then(ops...).Commit()
				lat := time.Since(t0)
				cancel()
				mu.Lock()
				if err != nil {
					if firstErr == nil {
						firstErr = err
					}
					stop = true
				} else {
					if firstRev == 0 || resp.Header.Revision < firstRev {
						// A Txn's Puts share one revision.
						firstRev = resp.Header.Revision
					}
					for range ops {
						lats = append(lats, lat)
					}
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return len(lats), lats, firstRev, firstErr
}

// Pipelined: etcd has no asynchronous put, so one client keeps
// window/txnOps Txns of txnOps Puts in flight (default --max-txn-ops is 128).
func (s *etcdSys) Pipelined(ctx context.Context, d time.Duration, window int, payload []byte) (int, []time.Duration, string, error) {
	inflight := max(1, window/s.txnOps)
	n, lats, _, err := s.txns(ctx, inflight, payload, d, func(int) (string, bool) { return s.key("w", "pipe"), true })
	return n, lats, fmt.Sprintf("one client, Txns of %d Puts, %d Txns in flight; latency = the Txn's", s.txnOps, inflight), err
}

func (s *etcdSys) Load(ctx context.Context, n, every int, payload []byte) error {
	base := s.loaded
	_, _, rev, err := s.txns(ctx, 16, payload, 0, func(i int) (string, bool) {
		if i >= n {
			return "", false
		}
		return fmt.Sprintf("ev/%s/%016x", loadStream(base+i, every), base+i), true
	})
	if s.loadRev == 0 {
		s.loadRev = rev
	}
	s.loaded += n
	return err
}

func (s *etcdSys) Methods() []string { return []string{"range", "watch"} }

const etcdPage = 10000 // keys per range Get

func (s *etcdSys) ReplayAll(ctx context.Context, method string, want int, yield func(int)) (string, error) {
	return s.replay(ctx, method, "ev/", want, yield)
}

func (s *etcdSys) ReplayStream(ctx context.Context, method string, want int, yield func(int)) (string, error) {
	return s.replay(ctx, method, "ev/"+targetStream+"/", want, yield)
}

func (s *etcdSys) replay(ctx context.Context, method, prefix string, want int, yield func(int)) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
	defer cancel()
	got := 0
	switch method {
	case "range":
		end := clientv3.GetPrefixRangeEnd(prefix)
		from := prefix
		var rev int64
		for got < want {
			opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(etcdPage)}
			if rev != 0 {
				opts = append(opts, clientv3.WithRev(rev))
			}
			resp, err := s.cl.Get(ctx, from, opts...)
			if err != nil {
				return "", err
			}
			rev = resp.Header.Revision
			for _, kv := range resp.Kvs {
				yield(len(kv.Value))
			}
			got += len(resp.Kvs)
			if !resp.More || len(resp.Kvs) == 0 {
				break
			}
			from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		}
		if got != want {
			return "", fmt.Errorf("range %s: %d of %d keys", prefix, got, want)
		}
		return fmt.Sprintf("paginated range Get over prefix %s (key order = write order), %d keys a page, pinned to one revision", prefix, etcdPage), nil
	case "watch":
		wc := s.cl.Watch(clientv3.WithRequireLeader(ctx), prefix, clientv3.WithPrefix(), clientv3.WithRev(s.loadRev))
		for got < want {
			wr, ok := <-wc
			if !ok {
				return "", fmt.Errorf("watch %s closed after %d of %d: %w", prefix, got, want, ctx.Err())
			}
			if err := wr.Err(); err != nil {
				return "", err
			}
			for _, ev := range wr.Events {
				yield(len(ev.Kv.Value))
				got++
			}
		}
		return fmt.Sprintf("Watch on prefix %s from the first loaded revision (revision order)", prefix), nil
	}
	return "", fmt.Errorf("unknown etcd replay method %q", method)
}

// Leader asks each reachable member for the leader's id and names it.
func (s *etcdSys) Leader(ctx context.Context) (string, error) {
	var lead uint64
	for _, ep := range s.endpoints {
		c, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := s.cl.Status(c, ep)
		cancel()
		if err == nil && st.Leader != 0 {
			lead = st.Leader
			break
		}
	}
	if lead == 0 {
		return "", errors.New("no etcd member knows a leader")
	}
	c, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	ml, err := s.cl.MemberList(c)
	if err != nil {
		return "", err
	}
	for _, m := range ml.Members {
		if m.ID == lead {
			return m.Name, nil
		}
	}
	return "", fmt.Errorf("leader %x not in the member list", lead)
}

// RaftDir: member/wal holds etcd's Raft log (fsynced before every ack);
// member/snap holds the bbolt database and Raft snapshots.
func (s *etcdSys) RaftDir(rel string) bool { return strings.HasPrefix(rel, "member/wal") }

func (s *etcdSys) LeaderKind() string { return "leader member" }
