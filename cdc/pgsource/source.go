package pgsource

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tsstore/tsstore/client"
)

// Source is the connector: it runs sessions (a replication connection
// and a producer) until its context ends or an error that another session
// cannot fix.
type Source struct {
	cfg Config
	cl  *client.Client
	log *slog.Logger

	stats struct {
		confirmed    atomic.Uint64 // LSN confirmed to PostgreSQL
		serverEnd    atomic.Uint64 // latest WAL end PostgreSQL reported
		oldestCommit atomic.Int64  // unix nanos of the oldest unacknowledged transaction's commit; 0: none
		txs          atomic.Uint64
		changes      atomic.Uint64
		sessions     atomic.Uint64
	}
	// forgotten: tsstore answered that it holds no sequence for the
	// producer (its dedup state expired, server ProducerTTL), so the next
	// session starts the producer again at 1; the markers still say what
	// is stored.
	forgotten atomic.Bool
}

// Stats is a snapshot of the connector's progress, for metrics.
type Stats struct {
	ConfirmedLSN uint64        // last LSN confirmed to PostgreSQL (only after tsstore acknowledged)
	ServerWALEnd uint64        // latest WAL end PostgreSQL reported
	LagBytes     uint64        // ServerWALEnd - ConfirmedLSN, 0 if not ahead
	Lag          time.Duration // age of the oldest committed transaction not yet acknowledged; 0 if none
	Transactions uint64        // appended (acknowledged)
	Changes      uint64        // row events appended (acknowledged)
	Sessions     uint64        // replication sessions started
}

// New returns a connector writing through cl.
func New(cfg Config, cl *client.Client) (*Source, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Source{cfg: cfg, cl: cl, log: log}, nil
}

// Stats returns the current figures.
func (s *Source) Stats() Stats {
	st := Stats{
		ConfirmedLSN: s.stats.confirmed.Load(),
		ServerWALEnd: s.stats.serverEnd.Load(),
		Transactions: s.stats.txs.Load(),
		Changes:      s.stats.changes.Load(),
		Sessions:     s.stats.sessions.Load(),
	}
	if st.ServerWALEnd > st.ConfirmedLSN {
		st.LagBytes = st.ServerWALEnd - st.ConfirmedLSN
	}
	if oc := s.stats.oldestCommit.Load(); oc != 0 {
		st.Lag = max(time.Since(time.Unix(0, oc)), 0)
	}
	return st
}

// Run captures changes until ctx ends (it then returns ctx's error) or an
// error another session cannot fix (ErrUnsupportedType and the other
// sentinels). A lost PostgreSQL connection or a tsstore failure ends the
// session; the next one resumes from what tsstore holds.
func (s *Source) Run(ctx context.Context) error {
	backoff := s.cfg.ReconnectBackoff
	for {
		s.stats.sessions.Add(1)
		start := time.Now()
		err := s.session(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if permanent(err) {
			s.log.Error("cdc connector stopped", "err", err)
			return err
		}
		if time.Since(start) > time.Minute {
			backoff = s.cfg.ReconnectBackoff
		}
		s.log.Warn("cdc session ended; starting another", "err", err, "backoff", backoff)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// session is one replication connection: resume, maybe create the slot
// and snapshot, then stream.
func (s *Source) session(ctx context.Context) (err error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	rcfg, err := pgconn.ParseConfig(s.cfg.ConnString)
	if err != nil {
		return fmt.Errorf("pgsource: connection string: %w", err)
	}
	rcfg.RuntimeParams["replication"] = "database"
	rcfg.RuntimeParams["timezone"] = "UTC"
	rcfg.RuntimeParams["datestyle"] = "ISO"
	rcfg.RuntimeParams["bytea_output"] = "hex"
	repl, err := pgconn.ConnectConfig(ctx, rcfg)
	if err != nil {
		return fmt.Errorf("pgsource: replication connection: %w", err)
	}
	defer repl.Close(context.Background())
	ccfg, err := pgx.ParseConfig(s.cfg.ConnString)
	if err != nil {
		return fmt.Errorf("pgsource: connection string: %w", err)
	}
	ccfg.RuntimeParams["timezone"] = "UTC"
	ccfg.RuntimeParams["datestyle"] = "ISO"
	ccfg.RuntimeParams["bytea_output"] = "hex"
	conn, err := pgx.ConnectConfig(ctx, ccfg)
	if err != nil {
		return fmt.Errorf("pgsource: connection: %w", err)
	}
	defer conn.Close(context.Background())

	sys, err := pglogrepl.IdentifySystem(ctx, repl)
	if err != nil {
		return fmt.Errorf("pgsource: IDENTIFY_SYSTEM: %w", err)
	}
	sess := &session{
		src: s, repl: repl, conn: conn, db: sys.DBName,
		schemas: map[string]*Schema{}, relations: map[uint32]*relation{}, typeNames: map[uint32]string{},
	}
	sess.markerStream = s.cfg.StreamPrefix + sys.DBName
	sess.producerID = s.cfg.ProducerID
	if sess.producerID == "" {
		sess.producerID = "cdc-postgres/" + sys.DBName + "/" + s.cfg.Slot
	}
	last, err := sess.lastMarker(ctx)
	if err != nil {
		return err
	}
	var nextSeq uint64 = 1
	if last != nil && !s.forgotten.Swap(false) {
		nextSeq = last.seq + 1
	} else if last != nil {
		s.log.Warn("tsstore forgot the producer (producer-ttl): its sequence starts again at 1", "producer", sess.producerID)
	}
	prod, err := s.cl.ResumeAsyncProducer(sess.producerID, nextSeq, s.cfg.Async)
	if err != nil {
		return err
	}
	sess.prod = prod
	sess.acks = make(chan inflight, 1024)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := sess.ackLoop(ctx); err != nil {
			cancel(err)
		}
	}()
	defer func() {
		// Finish what is in flight so the next session resumes after it.
		cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
		if cerr := prod.Close(cctx); cerr != nil && err == nil {
			err = cerr
		}
		ccancel()
		close(sess.acks)
		wg.Wait()
		s.stats.oldestCommit.Store(0)
		// The ack loop's failure is the cause of the stream's.
		if cause := context.Cause(ctx); err != nil && cause != nil && !errors.Is(cause, context.Canceled) {
			err = cause
		}
		var gap *client.SequenceGapError
		if errors.As(err, &gap) && gap.Expected == 1 {
			s.forgotten.Store(true)
		}
	}()

	start, err := sess.prepareSlot(ctx, last)
	if err != nil {
		return err
	}
	return sess.stream(ctx, start)
}
