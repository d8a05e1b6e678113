package pgsource

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/tsstore/tsstore/client"
)

// txn is the transaction being received.
type txn struct {
	begin  *pglogrepl.BeginMessage
	meta   []byte
	events []client.Event
	rows   int
	tables map[string]bool
	skip   bool // already in tsstore
}

// stream receives the slot's changes from start and hands every
// committed transaction to the producer as one append.
func (s *session) stream(ctx context.Context, start pglogrepl.LSN) error {
	args := []string{"proto_version '1'", "publication_names " + quoteLiteral(s.src.cfg.Publication)}
	if err := pglogrepl.StartReplication(ctx, s.repl, s.src.cfg.Slot, start, pglogrepl.StartReplicationOptions{PluginArgs: args}); err != nil {
		return fmt.Errorf("pgsource: START_REPLICATION of slot %s: %w", s.src.cfg.Slot, err)
	}
	s.src.log.Info("streaming", "slot", s.src.cfg.Slot, "from", start, "skip_to", s.skipTo)
	s.acked = start
	if err := s.sendStatus(ctx); err != nil {
		return err
	}
	next := time.Now().Add(s.src.cfg.StatusInterval)
	var tx *txn
	var pendingSchemas []client.Event // relation messages seen outside a transaction
	for {
		if time.Now().After(next) {
			if err := s.sendStatus(ctx); err != nil {
				return err
			}
			next = time.Now().Add(s.src.cfg.StatusInterval)
		}
		rctx, cancel := context.WithDeadline(ctx, next)
		msg, err := s.repl.ReceiveMessage(rctx)
		cancel()
		if err != nil {
			if pgconn.Timeout(err) && ctx.Err() == nil {
				continue
			}
			if cause := context.Cause(ctx); cause != nil {
				return cause
			}
			return fmt.Errorf("pgsource: receiving: %w", err)
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("pgsource: replication error: %s (%s)", m.Message, m.Code)
		case *pgproto3.CopyData:
			if len(m.Data) == 0 {
				continue
			}
			switch m.Data[0] {
			case pglogrepl.PrimaryKeepaliveMessageByteID:
				ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(m.Data[1:])
				if err != nil {
					return err
				}
				s.noteServerEnd(ka.ServerWALEnd)
				if tx == nil && s.inFlightCount() == 0 && ka.ServerWALEnd > s.received {
					// Nothing held back: the slot may move past WAL
					// without published changes.
					s.received = ka.ServerWALEnd
					s.ackedLSN.Store(uint64(ka.ServerWALEnd)) // the ack loop is idle: no other writer
				}
				if ka.ReplyRequested {
					next = time.Time{}
				}
			case pglogrepl.XLogDataByteID:
				xld, err := pglogrepl.ParseXLogData(m.Data[1:])
				if err != nil {
					return err
				}
				s.noteServerEnd(xld.ServerWALEnd)
				lm, err := pglogrepl.Parse(xld.WALData)
				if err != nil {
					return fmt.Errorf("pgsource: decoding pgoutput: %w", err)
				}
				if tx, err = s.handle(ctx, tx, lm, xld.WALStart, &pendingSchemas); err != nil {
					return err
				}
			}
		case *pgproto3.CopyDone, *pgproto3.CommandComplete:
			return errors.New("pgsource: PostgreSQL ended the replication stream (shutting down?)")
		default:
			return fmt.Errorf("pgsource: unexpected message %T", msg)
		}
	}
}

// handle applies one pgoutput message to the transaction being built and
// returns it (nil after a commit).
func (s *session) handle(ctx context.Context, tx *txn, lm pglogrepl.Message, at pglogrepl.LSN, pendingSchemas *[]client.Event) (*txn, error) {
	switch m := lm.(type) {
	case *pglogrepl.BeginMessage:
		tx = &txn{begin: m, tables: map[string]bool{}, skip: m.FinalLSN <= s.skipTo}
		tx.meta = encodeMeta(Meta{CommitLSN: m.FinalLSN.String(), Xid: m.Xid, CommitTime: m.CommitTime.UTC(), Slot: s.src.cfg.Slot})
		for _, ev := range *pendingSchemas { // (pgoutput sends relations inside transactions)
			ev.Metadata = tx.meta
			tx.events = append(tx.events, ev)
		}
		*pendingSchemas = nil
		return tx, nil
	case *pglogrepl.TypeMessage:
		s.typeNames[m.DataType] = m.Namespace + "." + m.Name
	case *pglogrepl.RelationMessage:
		ev, err := s.relation(ctx, m, tx)
		if err != nil {
			return nil, err
		}
		if ev != nil && tx != nil {
			tx.events = append(tx.events, *ev)
		} else if ev != nil {
			*pendingSchemas = append(*pendingSchemas, *ev)
		}
	case *pglogrepl.InsertMessage:
		return tx, s.change(tx, m.RelationID, OpInsert, at, 0, nil, m.Tuple)
	case *pglogrepl.UpdateMessage:
		return tx, s.change(tx, m.RelationID, OpUpdate, at, m.OldTupleType, m.OldTuple, m.NewTuple)
	case *pglogrepl.DeleteMessage:
		return tx, s.change(tx, m.RelationID, OpDelete, at, m.OldTupleType, m.OldTuple, nil)
	case *pglogrepl.TruncateMessage:
		for _, id := range m.RelationIDs {
			if err := s.change(tx, id, OpTruncate, at, 0, nil, nil); err != nil {
				return tx, err
			}
		}
	case *pglogrepl.CommitMessage:
		if tx == nil {
			return nil, errors.New("pgsource: commit without begin")
		}
		return nil, s.commit(ctx, tx, m)
	}
	return tx, nil
}

// relation records a table's columns and returns a SchemaChanged event if
// they differ from the last ones written.
func (s *session) relation(ctx context.Context, m *pglogrepl.RelationMessage, tx *txn) (*client.Event, error) {
	sc := &Schema{Table: m.Namespace + "." + m.RelationName, ReplicaIdentity: string(rune(m.ReplicaIdentity))}
	for _, c := range m.Columns {
		name, ok := typeName(c.DataType)
		if !ok {
			name = s.typeNames[c.DataType] // user-defined: from a Type message
		}
		if name == "" {
			// A built-in type without an encoding: named for the error.
			_ = s.conn.QueryRow(ctx, "SELECT format_type($1, $2)", c.DataType, c.TypeModifier).Scan(&name)
		}
		sc.Columns = append(sc.Columns, Column{Name: c.Name, Type: name, OID: c.DataType, TypeMod: c.TypeModifier, Key: c.Flags&1 != 0})
	}
	if err := checkEncodable(sc); err != nil {
		return nil, err
	}
	rel := &relation{schema: sc, stream: s.tableStream(sc.Table)}
	s.relations[m.RelationID] = rel
	prev, err := s.lastSchema(ctx, sc.Table, rel.stream)
	if err != nil {
		return nil, err
	}
	if prev != nil && prev.ReplicaIdentity == sc.ReplicaIdentity && slices.Equal(prev.Columns, sc.Columns) {
		return nil, nil
	}
	if tx != nil {
		sc.LSN = tx.begin.FinalLSN.String()
	}
	s.schemas[sc.Table] = sc
	meta := []byte(nil)
	if tx != nil {
		meta = tx.meta
	}
	return &client.Event{Stream: rel.stream, Type: TypeSchema, Metadata: meta, Payload: encode(sc)}, nil
}

// lastSchema is the table's last SchemaChanged in tsstore (read once per
// session), or nil.
func (s *session) lastSchema(ctx context.Context, table, stream string) (*Schema, error) {
	if sc, ok := s.schemas[table]; ok {
		return sc, nil
	}
	var last []byte
	for ev, err := range s.src.cl.Replay(ctx, 0, client.Stream(stream), client.EventTypes(TypeSchema)) {
		if errors.Is(err, client.ErrStreamNotFound) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("pgsource: reading %s's schema: %w", stream, err)
		}
		last = ev.Payload
	}
	if last == nil {
		s.schemas[table] = nil
		return nil, nil
	}
	sc, err := DecodeSchema(last)
	if err != nil {
		return nil, fmt.Errorf("pgsource: %s's SchemaChanged: %w", stream, err)
	}
	s.schemas[table] = sc
	return sc, nil
}

var opTypes = map[string]string{OpInsert: TypeRowInserted, OpUpdate: TypeRowUpdated, OpDelete: TypeRowDeleted, OpTruncate: TypeTruncated}

// change adds one row event to tx.
// oldType is pgoutput's 'K' (old is the key only) or 'O' (the whole
// old row, REPLICA IDENTITY FULL).
func (s *session) change(tx *txn, relID uint32, op string, at pglogrepl.LSN, oldType uint8, old, new *pglogrepl.TupleData) error {
	if tx == nil {
		return fmt.Errorf("pgsource: %s outside a transaction", op)
	}
	rel, ok := s.relations[relID]
	if !ok {
		return fmt.Errorf("pgsource: %s of unknown relation %d", op, relID)
	}
	c := &Change{Table: rel.schema.Table, Op: op, Columns: rel.schema.Columns, LSN: at.String(),
		CommitLSN: tx.begin.FinalLSN.String(), Xid: tx.begin.Xid, CommitTime: tx.begin.CommitTime.UTC(), Index: tx.rows}
	var err error
	if old != nil {
		if c.Old, _, err = s.tuple(rel, old, oldType == 'K'); err != nil {
			return err
		}
	}
	if new != nil {
		if c.New, c.Unchanged, err = s.tuple(rel, new, false); err != nil {
			return err
		}
	}
	tx.rows++
	tx.tables[rel.schema.Table] = true
	if !tx.skip {
		tx.events = append(tx.events, client.Event{Stream: rel.stream, Type: opTypes[op], Metadata: tx.meta, Payload: encode(c)})
	}
	return nil
}

// tuple decodes a tuple's columns. With keyOnly set, a key-only tuple
// (replica identity other than FULL) keeps just the key columns.
func (s *session) tuple(rel *relation, t *pglogrepl.TupleData, keyOnly bool) (map[string]any, []string, error) {
	if len(t.Columns) != len(rel.schema.Columns) {
		return nil, nil, fmt.Errorf("pgsource: %s: tuple of %d columns, relation has %d", rel.schema.Table, len(t.Columns), len(rel.schema.Columns))
	}
	out := make(map[string]any, len(t.Columns))
	var unchanged []string
	for i, col := range t.Columns {
		c := rel.schema.Columns[i]
		if keyOnly && !c.Key {
			continue
		}
		switch col.DataType {
		case 'n':
			out[c.Name] = nil
		case 'u':
			unchanged = append(unchanged, c.Name)
		case 't':
			v, err := decodeValue(c.OID, col.Data)
			if err != nil {
				return nil, nil, fmt.Errorf("pgsource: %s column %s: %w", rel.schema.Table, c.Name, err)
			}
			out[c.Name] = v
		default:
			return nil, nil, fmt.Errorf("pgsource: %s column %s: value in format %q", rel.schema.Table, c.Name, col.DataType)
		}
	}
	return out, unchanged, nil
}

// commit hands a complete transaction to the producer: its events and
// the marker, one append.
func (s *session) commit(ctx context.Context, tx *txn, m *pglogrepl.CommitMessage) error {
	inf := inflight{end: m.TransactionEndLSN, commit: m.CommitTime, changes: tx.rows}
	if !tx.skip && len(tx.events) > 0 {
		mk := &Marker{Slot: s.src.cfg.Slot, Xid: tx.begin.Xid, CommitLSN: uint64(m.CommitLSN), EndLSN: uint64(m.TransactionEndLSN),
			CommitTime: m.CommitTime.UTC(), Changes: tx.rows, Tables: sortedKeys(tx.tables)}
		events := append(tx.events, client.Event{Stream: s.markerStream, Type: TypeTransaction, Metadata: tx.meta, Payload: encode(mk)})
		p, err := s.prod.Send(ctx, events...)
		if err != nil {
			return fmt.Errorf("pgsource: appending transaction %d (commit LSN %s): %w", tx.begin.Xid, m.CommitLSN, err)
		}
		inf.p = p
	}
	s.received = m.TransactionEndLSN
	s.sent++
	select {
	case s.acks <- inf:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// ackLoop waits for the appends in commit order and publishes how far
// tsstore has acknowledged.
func (s *session) ackLoop(ctx context.Context) error {
	st := &s.src.stats
	for inf := range s.acks {
		st.oldestCommit.Store(inf.commit.UnixNano())
		if inf.p != nil {
			if _, err := inf.p.Wait(ctx); err != nil {
				return fmt.Errorf("pgsource: transaction ending at %s: %w", inf.end, err)
			}
			st.txs.Add(1)
			st.changes.Add(uint64(inf.changes))
			if s.src.cfg.OnAck != nil {
				s.src.cfg.OnAck(inf.commit, time.Now(), inf.changes)
			}
		}
		st.oldestCommit.Store(0)
		s.ackedLSN.Store(uint64(inf.end))
		s.ackedCount.Add(1)
	}
	return nil
}

func (s *session) inFlightCount() uint64 { return s.sent - s.ackedCount.Load() }

func (s *session) noteServerEnd(l pglogrepl.LSN) {
	if uint64(l) > s.src.stats.serverEnd.Load() {
		s.src.stats.serverEnd.Store(uint64(l))
	}
}

// sendStatus confirms to PostgreSQL what tsstore has acknowledged.
func (s *session) sendStatus(ctx context.Context) error {
	acked := pglogrepl.LSN(s.ackedLSN.Load())
	if acked < s.acked {
		acked = s.acked
	}
	s.acked = acked
	if err := pglogrepl.SendStandbyStatusUpdate(ctx, s.repl, pglogrepl.StandbyStatusUpdate{WALWritePosition: acked}); err != nil {
		return fmt.Errorf("pgsource: standby status: %w", err)
	}
	s.src.stats.confirmed.Store(uint64(acked))
	return nil
}

func (s *session) tableStream(table string) string {
	return s.src.cfg.StreamPrefix + s.db + "/" + table
}

func splitTable(t string) (schema, table string) {
	schema, table, _ = strings.Cut(t, ".")
	return schema, table
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
