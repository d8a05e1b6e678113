package pgsource

import (
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"time"

	"github.com/tsstore/tsstore/client"
)

// Config configures a Source. Start from DefaultConfig.
type Config struct {
	// ConnString is the PostgreSQL connection string (URL or key=value) of
	// the database to capture; replication=database is added for the
	// replication connection. The role needs REPLICATION and SELECT on the
	// published tables.
	ConnString string
	// Slot is the logical replication slot (pgoutput), created when
	// missing. It also names the producer: ProducerID defaults to
	// "cdc-postgres/<database>/<slot>".
	Slot string
	// Publication is the publication whose tables are captured; it must
	// exist (CREATE PUBLICATION ... FOR TABLE ... or FOR ALL TABLES).
	Publication string
	// Snapshot copies the publication's rows (RowSnapshot events) from the
	// slot's exported snapshot when the connector creates the slot.
	Snapshot bool
	// SnapshotChunkRows (count) bounds the rows of one snapshot append.
	SnapshotChunkRows int
	// StreamPrefix is put before "<database>/<schema>.<table>" (table
	// streams) and "<database>" (the transaction markers).
	StreamPrefix string
	// ProducerID overrides the producer id derived from the slot.
	ProducerID string
	// StatusInterval (duration) is how often the confirmed LSN is reported
	// to PostgreSQL (it is also reported when PostgreSQL asks).
	StatusInterval time.Duration
	// ReconnectBackoff (duration) is the pause before a new session after
	// PostgreSQL or tsstore failed; it doubles up to 30 s.
	ReconnectBackoff time.Duration
	// Async configures the producer: several transactions in flight,
	// acknowledged in commit order.
	Async client.AsyncOptions
	// OnAck, if set, is called (from one goroutine, in commit order) for
	// every transaction tsstore acknowledged: its commit time, the time of
	// the acknowledgement and its row changes.
	OnAck func(commit, acked time.Time, changes int)
	// Logger receives progress and errors; nil discards them.
	Logger *slog.Logger
}

// DefaultConfig returns a Config with the defaults; ConnString, Slot and
// Publication must still be set.
func DefaultConfig() Config {
	return Config{
		Snapshot:          true,
		SnapshotChunkRows: 5000,
		StreamPrefix:      "cdc/",
		StatusInterval:    time.Second,
		ReconnectBackoff:  time.Second,
		Async:             client.AsyncOptions{MaxInflight: 8, MaxBatchEvents: 20000, MaxBatchBytes: 8 << 20},
	}
}

// slotName is what PostgreSQL accepts as a slot name.
var slotName = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// Validate reports the first invalid field.
func (c Config) Validate() error {
	switch {
	case c.ConnString == "":
		return errors.New("pgsource: Config.ConnString is empty")
	case !slotName.MatchString(c.Slot):
		return fmt.Errorf("pgsource: Config.Slot %q: want 1-63 of a-z, 0-9, _", c.Slot)
	case c.Publication == "":
		return errors.New("pgsource: Config.Publication is empty")
	case c.SnapshotChunkRows <= 0:
		return fmt.Errorf("pgsource: Config.SnapshotChunkRows %d must be positive", c.SnapshotChunkRows)
	case c.StatusInterval <= 0 || c.ReconnectBackoff <= 0:
		return errors.New("pgsource: Config.StatusInterval and ReconnectBackoff must be positive")
	}
	return nil
}
