package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/tsstore/tsstore/cdc/pgsource"
	"github.com/tsstore/tsstore/client"
)

func newCDCCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cdc",
		Short: "change data capture into tsstore",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return fmt.Errorf("%w: a source is required: tsstore cdc postgres", errUsage)
		},
	}
	cmd.AddCommand(newCDCPostgresCmd(), newCDCReadCmd())
	return cmd
}

type cdcFlags struct {
	client     clientFlags
	config     string
	cfg        pgsource.Config
	metrics    string
	logFormat  string
	logLevel   string
	checkOnly  bool
	maxInfl    int
	deliveryTO time.Duration
}

func newCDCPostgresCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "postgres --pg CONNSTRING --slot SLOT --publication PUB [flags]",
		Short: "capture a PostgreSQL publication into tsstore, one atomic append per transaction",
		Long: "cdc postgres consumes a logical replication slot (pgoutput) of a publication and appends every committed\n" +
			"transaction to tsstore as one atomic append, in commit order, exactly once: one event per row change in\n" +
			"cdc/<database>/<schema>.<table>, a marker in cdc/<database> (docs/cdc.md). The slot is created (and the\n" +
			"publication's rows copied from its exported snapshot) on the first start.\n\n" +
			"Every flag is also a key of the --config TOML file (with _ for -) and a TSSTORE_CDC_<NAME> environment\n" +
			"variable; precedence: flag, then environment, then file, then default. Put the PostgreSQL password in\n" +
			"PGPASSWORD or a pgpass file rather than in --pg.",
		Args: noArgs,
	}
	f := &cdcFlags{cfg: pgsource.DefaultConfig()}
	fs := cmd.Flags()
	f.client.registerTimeout(fs, 0)
	fs.StringVar(&f.config, "config", "", "TOML config file; keys are the flag names with _ for -")
	fs.StringVar(&f.cfg.ConnString, "pg", "", "PostgreSQL connection string of the database to capture (URL or key=value; libpq PG* variables apply)")
	fs.StringVar(&f.cfg.Slot, "slot", "", "logical replication slot (created if missing); names the producer")
	fs.StringVar(&f.cfg.Publication, "publication", "", "publication whose tables are captured (must exist)")
	fs.BoolVar(&f.cfg.Snapshot, "snapshot", f.cfg.Snapshot, "copy the publication's rows from the slot's exported snapshot when the slot is created")
	fs.IntVar(&f.cfg.SnapshotChunkRows, "snapshot-chunk-rows", f.cfg.SnapshotChunkRows, "rows per snapshot append, count")
	fs.StringVar(&f.cfg.StreamPrefix, "stream-prefix", f.cfg.StreamPrefix, "prefix of the streams written: <prefix><database>/<schema>.<table>, <prefix><database>")
	fs.StringVar(&f.cfg.ProducerID, "producer-id", "", "producer id (default: cdc-postgres/<database>/<slot>)")
	fs.DurationVar(&f.cfg.StatusInterval, "status-interval", f.cfg.StatusInterval, "how often the confirmed LSN is sent to PostgreSQL")
	fs.IntVar(&f.maxInfl, "max-inflight", f.cfg.Async.MaxInflight, "appends awaiting acknowledgement at once, 1-8")
	fs.DurationVar(&f.deliveryTO, "delivery-timeout", 2*time.Minute, "how long one append is retried (e.g. through a leader election) before the session restarts")
	fs.StringVar(&f.metrics, "metrics-addr", "", "host:port serving Prometheus metrics at /metrics over HTTP (empty: off)")
	fs.StringVar(&f.logFormat, "log-format", "json", "log format: json or text")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.BoolVar(&f.checkOnly, "check-config", false, "validate the configuration and exit")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		stdout, stderr := stdio(cmd)
		if err := applySettings(fs, f.config, "TSSTORE_CDC_"); err != nil {
			return err
		}
		for _, req := range []struct{ v, flag string }{{f.cfg.ConnString, "--pg"}, {f.cfg.Slot, "--slot"}, {f.cfg.Publication, "--publication"}} {
			if req.v == "" {
				return fmt.Errorf("%w: %s is required (flag, TSSTORE_CDC_%s or the config file)", errUsage, req.flag,
					strings.ToUpper(strings.TrimPrefix(req.flag, "--")))
			}
		}
		f.cfg.Async.MaxInflight = f.maxInfl
		f.cfg.Async.DeliveryTimeout = f.deliveryTO
		if err := f.cfg.Validate(); err != nil {
			return fmt.Errorf("%w: %v", errUsage, err)
		}
		log, err := newLogger(stderr, f.logFormat, f.logLevel)
		if err != nil {
			return err
		}
		if f.checkOnly {
			fmt.Fprintln(stdout, "configuration ok")
			return nil
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
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		reg := prometheus.NewRegistry()
		ackDelay := prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tsstore_cdc_commit_to_ack_seconds",
			Help:    "Time from a transaction's commit in PostgreSQL to tsstore's acknowledgement of its append.",
			Buckets: []float64{.005, .01, .025, .05, .1, .2, .3, .5, 1, 2.5, 5, 10, 30},
		})
		reg.MustRegister(ackDelay)
		f.cfg.OnAck = func(commit, acked time.Time, _ int) { ackDelay.Observe(acked.Sub(commit).Seconds()) }
		f.cfg.Logger = log
		src, err := pgsource.New(f.cfg, cl)
		if err != nil {
			return err
		}
		registerCDCMetrics(reg, src)
		if err := serveMetrics(ctx, f.metrics, reg, log); err != nil {
			return err
		}
		err = src.Run(ctx)
		if errors.Is(err, context.Canceled) {
			log.Info("stopped")
			return nil
		}
		if errors.Is(err, pgsource.ErrUnsupportedType) || errors.Is(err, pgsource.ErrSnapshotInterrupted) ||
			errors.Is(err, pgsource.ErrSlotMissing) || errors.Is(err, pgsource.ErrForeignProducer) {
			// Starting again cannot help: exit 78, which the unit does
			// not restart on.
			return exitError{code: exitPermanent, err: err}
		}
		return err
	}
	return cmd
}

func registerCDCMetrics(reg *prometheus.Registry, src *pgsource.Source) {
	gauge := func(name, help string, fn func(pgsource.Stats) float64) {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 { return fn(src.Stats()) }))
	}
	counter := func(name, help string, fn func(pgsource.Stats) float64) {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return fn(src.Stats()) }))
	}
	gauge("tsstore_cdc_confirmed_lsn", "Last LSN confirmed to PostgreSQL (only after tsstore acknowledged it).",
		func(s pgsource.Stats) float64 { return float64(s.ConfirmedLSN) })
	gauge("tsstore_cdc_server_wal_end_lsn", "Latest WAL end PostgreSQL reported.", func(s pgsource.Stats) float64 { return float64(s.ServerWALEnd) })
	gauge("tsstore_cdc_lag_bytes", "Replication lag: PostgreSQL's WAL end minus the confirmed LSN, bytes.", func(s pgsource.Stats) float64 { return float64(s.LagBytes) })
	gauge("tsstore_cdc_lag_seconds", "Age of the oldest committed transaction not yet acknowledged by tsstore, seconds (0: none).",
		func(s pgsource.Stats) float64 { return s.Lag.Seconds() })
	counter("tsstore_cdc_transactions_total", "Transactions appended to tsstore.", func(s pgsource.Stats) float64 { return float64(s.Transactions) })
	counter("tsstore_cdc_row_changes_total", "Row change events appended to tsstore (rate() gives events/s).", func(s pgsource.Stats) float64 { return float64(s.Changes) })
	counter("tsstore_cdc_sessions_total", "Replication sessions started (more than one: reconnects).", func(s pgsource.Stats) float64 { return float64(s.Sessions) })
}
