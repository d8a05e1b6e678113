package pgsink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tsstore/tsstore/client"
)

// ErrUndecodable: an event the sink's mode cannot decode. Run stops with
// it before anything of its batch is committed; applying it again cannot
// succeed, so the command exits 78 rather than retrying.
var ErrUndecodable = errors.New("pgsink: event cannot be decoded")

// Modes of Config.Mode.
const (
	ModeEvents   = "events"
	ModeTraining = "training"
)

// Config configures a Sink. Start from DefaultConfig.
type Config struct {
	// ConnString is the PostgreSQL connection string of the target
	// database.
	ConnString string
	// Name identifies the sink: the key of its offset row. Two sinks with
	// one name must not run at once.
	Name string
	// Mode is ModeEvents or ModeTraining.
	Mode string
	// Stream, if set, selects one stream; else StreamPrefix selects the
	// streams under it ("" for all).
	Stream       string
	StreamPrefix string
	// Table is the events table of ModeEvents (schema-qualified or not).
	Table string
	// BatchEvents (count) bounds the events of one PostgreSQL transaction.
	BatchEvents int
	// Logger receives progress and errors; nil discards them.
	Logger *slog.Logger
}

// DefaultConfig returns the defaults: events mode into tsstore_events.
func DefaultConfig() Config {
	return Config{Name: "default", Mode: ModeEvents, Table: "tsstore_events", BatchEvents: 1000}
}

var ident = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$`)

// Validate reports the first invalid field.
func (c Config) Validate() error {
	switch {
	case c.ConnString == "":
		return errors.New("pgsink: Config.ConnString is empty")
	case c.Name == "":
		return errors.New("pgsink: Config.Name is empty")
	case c.Mode != ModeEvents && c.Mode != ModeTraining:
		return fmt.Errorf("pgsink: Config.Mode %q: want %s or %s", c.Mode, ModeEvents, ModeTraining)
	case c.Mode == ModeEvents && !ident.MatchString(c.Table):
		return fmt.Errorf("pgsink: Config.Table %q: want [schema.]name of letters, digits, _", c.Table)
	case c.BatchEvents <= 0:
		return fmt.Errorf("pgsink: Config.BatchEvents %d must be positive", c.BatchEvents)
	}
	return nil
}

// Sink applies tsstore events to PostgreSQL.
type Sink struct {
	cfg Config
	cl  *client.Client
	log *slog.Logger
	ap  applier

	next    atomic.Uint64 // offset after the last applied event
	applied atomic.Uint64 // events applied by this process
	lastTS  atomic.Int64  // commit time (unix nanos) of the last applied event
}

// Stats is a snapshot of the sink's progress, for metrics.
type Stats struct {
	NextOffset uint64        // offset after the last applied event
	Applied    uint64        // events applied since start
	Lag        time.Duration // now minus the commit time of the last applied event (0 before the first)
}

// New returns a sink reading through cl.
func New(cfg Config, cl *client.Client) (*Sink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Sink{cfg: cfg, cl: cl, log: log}
	switch cfg.Mode {
	case ModeEvents:
		s.ap = &eventsApplier{table: tableIdent(cfg.Table)}
	case ModeTraining:
		s.ap = trainingApplier{}
	}
	return s, nil
}

// Stats returns the current figures.
func (s *Sink) Stats() Stats {
	st := Stats{NextOffset: s.next.Load(), Applied: s.applied.Load()}
	if ts := s.lastTS.Load(); ts != 0 {
		st.Lag = max(time.Since(time.Unix(0, ts)), 0)
	}
	return st
}

// applier turns events into SQL inside the sink's transaction.
type applier interface {
	create(ctx context.Context, tx pgx.Tx) error
	apply(ctx context.Context, tx pgx.Tx, ev *client.RecordedEvent) error
}

const offsetsDDL = `CREATE TABLE IF NOT EXISTS tsstore_sink_offsets (
	sink text PRIMARY KEY,
	next_offset bigint NOT NULL,
	updated_at timestamptz NOT NULL DEFAULT now())`

// Run applies events until ctx ends or an error; a lost connection to
// PostgreSQL or an apply error ends Run (the caller, e.g. systemd,
// restarts it: the offset row makes that safe).
func (s *Sink) Run(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, s.cfg.ConnString)
	if err != nil {
		return fmt.Errorf("pgsink: connecting: %w", err)
	}
	defer conn.Close(context.Background())
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		// One creator at a time (CREATE ... IF NOT EXISTS races).
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(7707)"); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, offsetsDDL); err != nil {
			return err
		}
		return s.ap.create(ctx, tx)
	})
	if err != nil {
		return fmt.Errorf("pgsink: creating tables: %w", err)
	}
	var from uint64
	err = conn.QueryRow(ctx, "SELECT next_offset FROM tsstore_sink_offsets WHERE sink = $1", s.cfg.Name).Scan(&from)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("pgsink: reading the offset of sink %s: %w", s.cfg.Name, err)
	}
	s.next.Store(from)
	s.log.Info("sink starting", "sink", s.cfg.Name, "from", from, "mode", s.cfg.Mode)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	evs := make(chan client.RecordedEvent, s.cfg.BatchEvents)
	errc := make(chan error, 1)
	var opts []client.ReadOption
	if s.cfg.Stream != "" {
		opts = append(opts, client.Stream(s.cfg.Stream))
	} else if s.cfg.StreamPrefix != "" {
		opts = append(opts, client.StreamPrefix(s.cfg.StreamPrefix))
	}
	if s.cfg.Mode == ModeTraining {
		opts = append(opts, client.EventTypes(trainingTypes...))
	}
	go func() {
		for ev, err := range s.cl.Subscribe(ctx, from, opts...) {
			if err != nil {
				errc <- err
				return
			}
			select {
			case evs <- ev:
			case <-ctx.Done():
				return
			}
		}
	}()
	batch := make([]client.RecordedEvent, 0, s.cfg.BatchEvents)
	for {
		batch = batch[:0]
		select {
		case ev := <-evs:
			batch = append(batch, ev)
		case err := <-errc:
			return fmt.Errorf("pgsink: subscription: %w", err)
		case <-ctx.Done():
			return ctx.Err()
		}
	drain:
		for len(batch) < s.cfg.BatchEvents {
			select {
			case ev := <-evs:
				batch = append(batch, ev)
			default:
				break drain
			}
		}
		if err := s.applyBatch(ctx, conn, batch); err != nil {
			return err
		}
	}
}

// applyBatch applies events and stores the offset after them in one
// transaction.
func (s *Sink) applyBatch(ctx context.Context, conn *pgx.Conn, batch []client.RecordedEvent) error {
	next := batch[len(batch)-1].Offset + 1
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		for i := range batch {
			if err := s.ap.apply(ctx, tx, &batch[i]); err != nil {
				return fmt.Errorf("pgsink: event at offset %d (%s in %s): %w", batch[i].Offset, batch[i].Type, batch[i].Stream, err)
			}
		}
		_, err := tx.Exec(ctx, `INSERT INTO tsstore_sink_offsets (sink, next_offset, updated_at) VALUES ($1, $2, now())
			ON CONFLICT (sink) DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()`, s.cfg.Name, int64(next))
		return err
	})
	if err != nil {
		return err
	}
	s.next.Store(next)
	s.applied.Add(uint64(len(batch)))
	s.lastTS.Store(batch[len(batch)-1].Timestamp.UnixNano())
	return nil
}
