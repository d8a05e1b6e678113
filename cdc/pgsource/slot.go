package pgsource

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/tsstore/tsstore/client"
)

// prepareSlot decides where streaming starts from what tsstore holds
// (the last marker) and whether the slot exists, creating the slot (and
// copying the snapshot) for a connector that has written nothing yet.
func (s *session) prepareSlot(ctx context.Context, last *lastAppend) (pglogrepl.LSN, error) {
	var exists bool
	err := s.conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database())", s.src.cfg.Slot).Scan(&exists)
	if err != nil {
		return 0, fmt.Errorf("pgsource: looking up slot %s: %w", s.src.cfg.Slot, err)
	}
	switch {
	case last == nil:
		if exists {
			// Created by a connector that died before its first append:
			// nothing was written or confirmed, so it starts over.
			s.src.log.Info("dropping slot that has nothing in tsstore", "slot", s.src.cfg.Slot)
			if err := pglogrepl.DropReplicationSlot(ctx, s.repl, s.src.cfg.Slot, pglogrepl.DropReplicationSlotOptions{Wait: true}); err != nil {
				return 0, fmt.Errorf("pgsource: dropping slot %s: %w", s.src.cfg.Slot, err)
			}
		}
		return s.createSlot(ctx)
	case last.typ == TypeSnapshotChunk:
		return 0, fmt.Errorf("%w: %s ends with a %s of slot %s (the connector stopped during the initial snapshot, whose exported snapshot is gone); "+
			"to start over, drop the slot and capture into a new stream prefix (--stream-prefix)", ErrSnapshotInterrupted, s.markerStream, last.typ, last.Slot)
	case !exists:
		return 0, fmt.Errorf("%w: %s holds transactions up to LSN %s from slot %s, which does not exist in database %s: changes since may be lost; "+
			"to start over, capture into a new stream prefix (--stream-prefix)", ErrSlotMissing, s.markerStream, pglogrepl.LSN(last.CommitLSN), s.src.cfg.Slot, s.db)
	}
	if last.typ == TypeTransaction {
		s.skipTo = pglogrepl.LSN(last.CommitLSN)
	}
	s.received = pglogrepl.LSN(last.EndLSN)
	s.src.stats.confirmed.Store(last.EndLSN) // confirmed at the first status update
	return s.received, nil
}

// createSlot creates the slot and writes the first append: the snapshot's
// chunks, or a SlotCreated marker.
func (s *session) createSlot(ctx context.Context) (pglogrepl.LSN, error) {
	action := "NOEXPORT_SNAPSHOT"
	if s.src.cfg.Snapshot {
		action = "EXPORT_SNAPSHOT"
	}
	res, err := pglogrepl.CreateReplicationSlot(ctx, s.repl, s.src.cfg.Slot, "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{SnapshotAction: action, Mode: pglogrepl.LogicalReplication})
	if err != nil {
		return 0, fmt.Errorf("pgsource: creating slot %s: %w", s.src.cfg.Slot, err)
	}
	cp, err := pglogrepl.ParseLSN(res.ConsistentPoint)
	if err != nil {
		return 0, fmt.Errorf("pgsource: slot consistent point %q: %w", res.ConsistentPoint, err)
	}
	s.src.log.Info("created slot", "slot", s.src.cfg.Slot, "consistent_point", cp, "snapshot", res.SnapshotName)
	if s.src.cfg.Snapshot {
		err = s.snapshot(ctx, res.SnapshotName, cp)
	} else {
		err = s.appendMarker(ctx, TypeSlotCreated, &Marker{Slot: s.src.cfg.Slot, CommitLSN: uint64(cp), EndLSN: uint64(cp)}, nil)
	}
	if err != nil {
		return 0, err
	}
	s.received = cp
	return cp, nil
}

// appendMarker appends events and a marker as one append and waits for it.
func (s *session) appendMarker(ctx context.Context, typ string, m *Marker, events []client.Event) error {
	meta := encodeMeta(Meta{CommitLSN: pglogrepl.LSN(m.CommitLSN).String(), CommitTime: m.CommitTime, Slot: m.Slot})
	events = append(events, client.Event{Stream: s.markerStream, Type: typ, Metadata: meta, Payload: encode(m)})
	p, err := s.prod.Send(ctx, events...)
	if err != nil {
		return err
	}
	_, err = p.Wait(ctx)
	return err
}

// snapshot copies every published table's rows as of the slot's exported
// snapshot (so exactly the changes committed after cp follow in the
// stream), in chunks; the last chunk's marker is SnapshotCompleted.
func (s *session) snapshot(ctx context.Context, name string, cp pglogrepl.LSN) error {
	tx, err := s.conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return fmt.Errorf("pgsource: snapshot transaction: %w", err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, "SET TRANSACTION SNAPSHOT "+quoteLiteral(name)); err != nil {
		return fmt.Errorf("pgsource: importing snapshot %s: %w", name, err)
	}
	tables, err := publishedTables(ctx, tx, s.src.cfg.Publication)
	if err != nil {
		return err
	}
	now := time.Now().UTC()
	meta := encodeMeta(Meta{CommitLSN: cp.String(), CommitTime: now, Slot: s.src.cfg.Slot})
	var (
		events  []client.Event
		bytes   int
		chunk   = map[string]bool{}
		total   int
		pending []*client.Pending
	)
	flush := func(final bool) error {
		typ := TypeSnapshotChunk
		if final {
			typ = TypeSnapshotCompleted
		}
		m := &Marker{Slot: s.src.cfg.Slot, CommitLSN: uint64(cp), EndLSN: uint64(cp), CommitTime: now, Changes: total, Tables: sortedKeys(chunk)}
		events = append(events, client.Event{Stream: s.markerStream, Type: typ, Metadata: meta, Payload: encode(m)})
		p, err := s.prod.Send(ctx, events...)
		if err != nil {
			return err
		}
		pending = append(pending, p)
		events, bytes, chunk = nil, 0, map[string]bool{}
		return nil
	}
	for _, t := range tables {
		sc, err := catalogSchema(ctx, tx, t[0], t[1])
		if err != nil {
			return err
		}
		sc.LSN = cp.String()
		if err := checkEncodable(sc); err != nil {
			return err
		}
		stream := s.tableStream(sc.Table)
		s.schemas[sc.Table] = sc
		events = append(events, client.Event{Stream: stream, Type: TypeSchema, Metadata: meta, Payload: encode(sc)})
		chunk[sc.Table] = true
		err = s.copyTable(ctx, tx, sc, func(row map[string]any) error {
			c := &Change{Table: sc.Table, Op: OpSnapshot, Columns: sc.Columns, New: row, LSN: cp.String(), CommitLSN: cp.String(),
				CommitTime: now, Index: len(events)}
			p := encode(c)
			events = append(events, client.Event{Stream: stream, Type: TypeRowSnapshot, Metadata: meta, Payload: p})
			chunk[sc.Table] = true
			bytes += len(p)
			total++
			if len(events) >= s.src.cfg.SnapshotChunkRows || bytes >= 4<<20 {
				return flush(false)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	if err := flush(true); err != nil {
		return err
	}
	for _, p := range pending {
		if _, err := p.Wait(ctx); err != nil {
			return fmt.Errorf("pgsource: appending the snapshot: %w", err)
		}
	}
	s.src.log.Info("initial snapshot written", "tables", len(tables), "rows", total, "lsn", cp)
	return nil
}

// copyTable reads a table's rows in text form and decodes them.
func (s *session) copyTable(ctx context.Context, tx pgx.Tx, sc *Schema, fn func(map[string]any) error) error {
	cols := ""
	for i, c := range sc.Columns {
		if i > 0 {
			cols += ", "
		}
		cols += pgx.Identifier{c.Name}.Sanitize()
	}
	schema, table := splitTable(sc.Table)
	q := "SELECT " + cols + " FROM ONLY " + pgx.Identifier{schema, table}.Sanitize()
	if len(sc.Columns) == 0 {
		return nil
	}
	rows, err := tx.Query(ctx, q, pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		return fmt.Errorf("pgsource: snapshot of %s: %w", sc.Table, err)
	}
	defer rows.Close()
	for rows.Next() {
		raw := rows.RawValues()
		row := make(map[string]any, len(raw))
		for i, v := range raw {
			if v == nil {
				row[sc.Columns[i].Name] = nil
				continue
			}
			val, err := decodeValue(sc.Columns[i].OID, v)
			if err != nil {
				return fmt.Errorf("pgsource: snapshot of %s column %s: %w", sc.Table, sc.Columns[i].Name, err)
			}
			row[sc.Columns[i].Name] = val
		}
		if err := fn(row); err != nil {
			return err
		}
	}
	return rows.Err()
}

func publishedTables(ctx context.Context, tx pgx.Tx, pub string) ([][2]string, error) {
	var ok bool
	if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)", pub).Scan(&ok); err != nil {
		return nil, fmt.Errorf("pgsource: looking up publication %s: %w", pub, err)
	}
	if !ok {
		return nil, fmt.Errorf("pgsource: publication %s does not exist (CREATE PUBLICATION %s FOR TABLE ...)", pub, pub)
	}
	rows, err := tx.Query(ctx, "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1, 2", pub)
	if err != nil {
		return nil, fmt.Errorf("pgsource: tables of publication %s: %w", pub, err)
	}
	var out [][2]string
	for rows.Next() {
		var t [2]string
		if err := rows.Scan(&t[0], &t[1]); err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

// catalogSchema reads a table's columns as pgoutput reports them: no
// dropped or generated columns; Key for the replica identity's columns
// (all of them under REPLICA IDENTITY FULL).
func catalogSchema(ctx context.Context, tx pgx.Tx, schema, table string) (*Schema, error) {
	const q = `SELECT a.attname::text, a.atttypid, a.atttypmod, format_type(a.atttypid, a.atttypmod), c.relreplident::text,
	c.relreplident = 'f' OR COALESCE(a.attnum = ANY(i.indkey), false)
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
LEFT JOIN pg_index i ON i.indrelid = c.oid AND ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident))
WHERE c.oid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
ORDER BY a.attnum`
	rows, err := tx.Query(ctx, q, pgx.Identifier{schema, table}.Sanitize())
	if err != nil {
		return nil, fmt.Errorf("pgsource: columns of %s.%s: %w", schema, table, err)
	}
	sc := &Schema{Table: schema + "." + table}
	for rows.Next() {
		var c Column
		var pretty string
		if err := rows.Scan(&c.Name, &c.OID, &c.TypeMod, &pretty, &sc.ReplicaIdentity, &c.Key); err != nil {
			return nil, err
		}
		var ok bool
		if c.Type, ok = typeName(c.OID); !ok {
			c.Type = pretty // for the error: not encodable
		}
		sc.Columns = append(sc.Columns, c)
	}
	return sc, rows.Err()
}

// checkEncodable returns ErrUnsupportedType for the schema's first column
// without a typed encoding.
func checkEncodable(sc *Schema) error {
	for _, c := range sc.Columns {
		if _, ok := typeName(c.OID); ok {
			continue
		}
		name := c.Type
		if name == "" {
			name = "unknown"
		}
		return fmt.Errorf("%w: table %s column %s has type %s (oid %d); remove the table from the publication "+
			"or change the column to a supported type (docs/cdc.md lists them)", ErrUnsupportedType, sc.Table, c.Name, name, c.OID)
	}
	return nil
}

func quoteLiteral(s string) string {
	out := []byte{'\''}
	for i := 0; i < len(s); i++ {
		if s[i] == '\'' {
			out = append(out, '\'')
		}
		out = append(out, s[i])
	}
	return string(append(out, '\''))
}
