package pgsink

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/tsstore/tsstore/client"
	"github.com/tsstore/tsstore/client/train"
)

func tableIdent(name string) pgx.Identifier { return pgx.Identifier(strings.Split(name, ".")) }

// eventsApplier writes every event as a row.
type eventsApplier struct{ table pgx.Identifier }

func (a *eventsApplier) create(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+a.table.Sanitize()+` (
	"offset" bigint PRIMARY KEY,
	stream text NOT NULL,
	version bigint NOT NULL,
	type text NOT NULL,
	committed_at timestamptz NOT NULL,
	metadata bytea,
	payload bytea)`)
	return err
}

func (a *eventsApplier) apply(ctx context.Context, tx pgx.Tx, ev *client.RecordedEvent) error {
	// A plain INSERT: a second copy of an offset would be a bug, and the
	// primary key turns it into an error rather than a silent overwrite.
	_, err := tx.Exec(ctx, `INSERT INTO `+a.table.Sanitize()+` ("offset", stream, version, type, committed_at, metadata, payload)
		VALUES ($1, $2, $3, $4, $5, $6, $7)`, int64(ev.Offset), ev.Stream, int64(ev.StreamVersion), ev.Type, ev.Timestamp, ev.Metadata, ev.Payload)
	return err
}

// trainingTypes are the events the training mode reads.
var trainingTypes = []string{"TrainingStarted", "CheckpointSaved", "TrainingFinished", "TrainingAborted"}

// trainingApplier keeps runs and checkpoints per rank.
type trainingApplier struct{}

const trainingDDL = `CREATE TABLE IF NOT EXISTS tsstore_runs (
	run text PRIMARY KEY,
	model text NOT NULL DEFAULT '',
	config_hash text NOT NULL DEFAULT '',
	world_size int NOT NULL DEFAULT 0,
	status text NOT NULL,
	reason text NOT NULL DEFAULT '',
	last_checkpoint_step bigint,
	updated_offset bigint NOT NULL);
CREATE TABLE IF NOT EXISTS tsstore_checkpoints (
	run text NOT NULL,
	step bigint NOT NULL,
	rank int NOT NULL,
	uri text NOT NULL,
	size bigint NOT NULL,
	sha256 text NOT NULL,
	"offset" bigint NOT NULL,
	PRIMARY KEY (run, step, rank));
CREATE OR REPLACE VIEW tsstore_checkpoint_agreement AS
SELECT c.run, c.step, r.world_size,
	count(*)::int AS ranks_saved,
	count(DISTINCT c.sha256)::int AS distinct_hashes,
	COALESCE(count(*) = r.world_size AND count(DISTINCT c.sha256) = 1, false) AS agreed
FROM tsstore_checkpoints c LEFT JOIN tsstore_runs r USING (run)
GROUP BY c.run, c.step, r.world_size`

func (trainingApplier) create(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, trainingDDL)
	return err
}

func (trainingApplier) apply(ctx context.Context, tx pgx.Tx, ev *client.RecordedEvent) error {
	e, err := train.Decode(ev.Type, ev.Payload)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUndecodable, err)
	}
	off := int64(ev.Offset)
	switch e := e.(type) {
	case train.TrainingStarted:
		_, err = tx.Exec(ctx, `INSERT INTO tsstore_runs (run, model, config_hash, world_size, status, updated_offset)
			VALUES ($1, $2, $3, $4, 'running', $5)
			ON CONFLICT (run) DO UPDATE SET model = EXCLUDED.model, config_hash = EXCLUDED.config_hash,
				world_size = EXCLUDED.world_size, status = 'running', reason = '', updated_offset = EXCLUDED.updated_offset`,
			ev.Stream, e.Model, e.ConfigHash, e.WorldSize, off)
	case train.CheckpointSaved:
		// A rank that saves a step again (a restarted attempt) replaces
		// its row: the table holds each rank's latest save of the step.
		_, err = tx.Exec(ctx, `INSERT INTO tsstore_checkpoints (run, step, rank, uri, size, sha256, "offset")
			VALUES ($1, $2, $3, $4, $5, $6, $7)
			ON CONFLICT (run, step, rank) DO UPDATE SET uri = EXCLUDED.uri, size = EXCLUDED.size,
				sha256 = EXCLUDED.sha256, "offset" = EXCLUDED."offset"`,
			ev.Stream, int64(e.Step), e.Rank, e.URI, int64(e.Size), e.SHA256, off)
		if err == nil {
			_, err = tx.Exec(ctx, `INSERT INTO tsstore_runs (run, status, last_checkpoint_step, updated_offset) VALUES ($1, 'running', $2, $3)
				ON CONFLICT (run) DO UPDATE SET last_checkpoint_step = GREATEST(tsstore_runs.last_checkpoint_step, EXCLUDED.last_checkpoint_step),
					updated_offset = EXCLUDED.updated_offset`, ev.Stream, int64(e.Step), off)
		}
	case train.TrainingFinished:
		err = setStatus(ctx, tx, ev.Stream, "finished", e.Reason, off)
	case train.TrainingAborted:
		err = setStatus(ctx, tx, ev.Stream, "aborted", e.Reason, off)
	default:
		return fmt.Errorf("%w: unexpected event %T", ErrUndecodable, e)
	}
	return err
}

func setStatus(ctx context.Context, tx pgx.Tx, run, status, reason string, off int64) error {
	_, err := tx.Exec(ctx, `INSERT INTO tsstore_runs (run, status, reason, updated_offset) VALUES ($1, $2, $3, $4)
		ON CONFLICT (run) DO UPDATE SET status = EXCLUDED.status, reason = EXCLUDED.reason, updated_offset = EXCLUDED.updated_offset`,
		run, status, reason, off)
	return err
}

// Agreement answers "did every rank of run save step with the same hash?"
// from the view tsstore_checkpoint_agreement: the ranks that saved it, the
// distinct hashes, and agreed (every rank of the run's world size saved
// it, all with one hash). ok is false if no rank saved the step.
func Agreement(ctx context.Context, conn *pgx.Conn, run string, step uint64) (ranks, hashes int, agreed, ok bool, err error) {
	err = conn.QueryRow(ctx, `SELECT ranks_saved, distinct_hashes, agreed FROM tsstore_checkpoint_agreement WHERE run = $1 AND step = $2`,
		run, int64(step)).Scan(&ranks, &hashes, &agreed)
	if err == pgx.ErrNoRows {
		return 0, 0, false, false, nil
	}
	return ranks, hashes, agreed, err == nil, err
}
