package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/tsstore/tsstore/cdc/pgsink"
	"github.com/tsstore/tsstore/client"
)

func newSinkCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "sink",
		Short: "keep an external database up to date from tsstore streams",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return fmt.Errorf("%w: a target is required: tsstore sink postgres", errUsage)
		},
	}
	cmd.AddCommand(newSinkPostgresCmd())
	return cmd
}

type sinkFlags struct {
	client    clientFlags
	config    string
	cfg       pgsink.Config
	metrics   string
	logFormat string
	logLevel  string
	checkOnly bool
	run       string
	step      int64
}

func newSinkPostgresCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "postgres --pg CONNSTRING [--mode events|training] [--stream S | --stream-prefix P] [flags]",
		Short: "keep PostgreSQL tables up to date from tsstore streams, exactly once",
		Long: "sink postgres subscribes to tsstore and applies the selected events to PostgreSQL tables, storing the offset\n" +
			"after the last applied event in the same transaction (tsstore_sink_offsets), so a restart neither skips nor\n" +
			"repeats an event. --mode events writes one row per event (--table); --mode training keeps tsstore_runs and\n" +
			"tsstore_checkpoints (one row per run, step and rank) from run streams, and the view\n" +
			"tsstore_checkpoint_agreement. With --run and --step it answers instead whether every rank saved that step\n" +
			"with the same hash, and exits 0 if so, 1 if not (docs/cdc.md).\n\n" +
			"Every flag is also a key of the --config TOML file (with _ for -) and a TSSTORE_SINK_<NAME> environment\n" +
			"variable; precedence: flag, then environment, then file, then default.",
		Args: noArgs,
	}
	f := &sinkFlags{cfg: pgsink.DefaultConfig()}
	fs := cmd.Flags()
	f.client.registerTimeout(fs, 0)
	fs.StringVar(&f.config, "config", "", "TOML config file; keys are the flag names with _ for -")
	fs.StringVar(&f.cfg.ConnString, "pg", "", "PostgreSQL connection string of the target database (libpq PG* variables apply)")
	fs.StringVar(&f.cfg.Name, "name", f.cfg.Name, "sink name: the key of its offset row")
	fs.StringVar(&f.cfg.Mode, "mode", f.cfg.Mode, "events (a row per event) or training (runs and checkpoints per rank)")
	fs.StringVar(&f.cfg.Stream, "stream", "", "read this one stream")
	fs.StringVar(&f.cfg.StreamPrefix, "stream-prefix", "", "read the streams under this prefix (default: all)")
	fs.StringVar(&f.cfg.Table, "table", f.cfg.Table, "events mode: the table, [schema.]name")
	fs.IntVar(&f.cfg.BatchEvents, "batch-events", f.cfg.BatchEvents, "events per PostgreSQL transaction at most, count")
	fs.StringVar(&f.metrics, "metrics-addr", "", "host:port serving Prometheus metrics at /metrics over HTTP (empty: off)")
	fs.StringVar(&f.logFormat, "log-format", "json", "log format: json or text")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.BoolVar(&f.checkOnly, "check-config", false, "validate the configuration and exit")
	fs.StringVar(&f.run, "run", "", "with --step: the run (stream) to check")
	fs.Int64Var(&f.step, "step", -1, "with --run: answer whether every rank saved this step with the same hash, and exit")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		stdout, stderr := stdio(cmd)
		if err := applySettings(fs, f.config, "TSSTORE_SINK_"); err != nil {
			return err
		}
		if f.cfg.ConnString == "" {
			return fmt.Errorf("%w: --pg is required (flag, TSSTORE_SINK_PG or the config file)", errUsage)
		}
		if err := f.cfg.Validate(); err != nil {
			return fmt.Errorf("%w: %v", errUsage, err)
		}
		if (f.run == "") != (f.step < 0) {
			return fmt.Errorf("%w: --run and --step go together", errUsage)
		}
		log, err := newLogger(stderr, f.logFormat, f.logLevel)
		if err != nil {
			return err
		}
		if f.checkOnly {
			fmt.Fprintln(stdout, "configuration ok")
			return nil
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		if f.run != "" {
			return checkAgreement(ctx, f, stdout)
		}
		ccfg, err := f.client.config()
		if err != nil {
			return err
		}
		cl, err := client.New(ccfg)
		if err != nil {
			return err
		}
		defer cl.Close()
		f.cfg.Logger = log
		s, err := pgsink.New(f.cfg, cl)
		if err != nil {
			return err
		}
		reg := prometheus.NewRegistry()
		reg.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tsstore_sink_next_offset", Help: "Offset after the last event applied (stored in PostgreSQL)."},
				func() float64 { return float64(s.Stats().NextOffset) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "tsstore_sink_events_applied_total", Help: "Events applied by this process (rate() gives events/s)."},
				func() float64 { return float64(s.Stats().Applied) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tsstore_sink_lag_seconds", Help: "Now minus the commit time of the last applied event, seconds."},
				func() float64 { return s.Stats().Lag.Seconds() }),
		)
		if err := serveMetrics(ctx, f.metrics, reg, log); err != nil {
			return err
		}
		// A failed session (PostgreSQL restarting, tsstore electing) ends
		// Run; the next resumes from the stored offset.
		backoff := time.Second
		for {
			start := time.Now()
			err := s.Run(ctx)
			if ctx.Err() != nil {
				log.Info("stopped")
				return nil
			}
			if errors.Is(err, pgsink.ErrUndecodable) {
				return exitError{code: exitPermanent, err: err}
			}
			if time.Since(start) > time.Minute {
				backoff = time.Second
			}
			log.Warn("sink session ended; starting another", "err", err, "backoff", backoff)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 30*time.Second)
		}
	}
	return cmd
}

func checkAgreement(ctx context.Context, f *sinkFlags, stdout io.Writer) error {
	conn, err := pgx.Connect(ctx, f.cfg.ConnString)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	ranks, hashes, agreed, ok, err := pgsink.Agreement(ctx, conn, f.run, uint64(f.step))
	if err != nil {
		return err
	}
	if f.client.json {
		if err := json.NewEncoder(stdout).Encode(map[string]any{"run": f.run, "step": f.step, "ranks_saved": ranks, "distinct_hashes": hashes, "agreed": agreed}); err != nil {
			return err
		}
	} else {
		switch {
		case !ok:
			fmt.Fprintf(stdout, "%s step %d: no rank saved it\n", f.run, f.step)
		case agreed:
			fmt.Fprintf(stdout, "%s step %d: every rank (%d) saved it with the same hash\n", f.run, f.step, ranks)
		default:
			fmt.Fprintf(stdout, "%s step %d: NOT agreed: %d ranks saved it, %d distinct hashes\n", f.run, f.step, ranks, hashes)
		}
	}
	if !agreed {
		return exitError{code: 1, err: errors.New("checkpoint not agreed")}
	}
	return nil
}
