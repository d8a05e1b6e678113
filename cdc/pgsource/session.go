package pgsource

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tsstore/tsstore/client"
)

// session is the state of one replication connection.
type session struct {
	src          *Source
	repl         *pgconn.PgConn // replication protocol
	conn         *pgx.Conn      // catalog queries and the snapshot
	db           string
	markerStream string
	producerID   string
	prod         *client.AsyncProducer
	acks         chan inflight

	// skipTo: transactions committed at or below it are already in
	// tsstore (the last marker's commit LSN).
	skipTo pglogrepl.LSN
	// received is the end LSN of the last transaction handed to the
	// producer or skipped; acked that of the last one tsstore acknowledged
	// (or skipped): only acked is confirmed to PostgreSQL.
	received, acked pglogrepl.LSN
	ackedLSN        atomic.Uint64 // written by the ack loop
	sent            uint64        // transactions handed to the ack loop
	ackedCount      atomic.Uint64 // of those, acknowledged (or skipped)

	schemas   map[string]*Schema   // last SchemaChanged written per table (loaded on first use)
	relations map[uint32]*relation // from Relation messages, by relation id
	typeNames map[uint32]string    // from Type messages
}

// relation is a table as the current session knows it.
type relation struct {
	schema *Schema
	stream string
}

// inflight is one append waiting for its acknowledgement.
type inflight struct {
	p       *client.Pending
	end     pglogrepl.LSN
	commit  time.Time
	changes int
}

// lastMarker reads the last marker of the database's stream: the newest
// append this connector made, and the producer sequence of its last event.
func (s *session) lastMarker(ctx context.Context) (*lastAppend, error) {
	from := uint64(1)
	for info, err := range s.src.cl.ListStreams(ctx, s.markerStream) {
		if err != nil {
			return nil, fmt.Errorf("pgsource: listing %s: %w", s.markerStream, err)
		}
		if info.Name == s.markerStream && info.Version > 0 {
			from = info.Version
		}
	}
	// The listing may come from a lagging node; the (linearizable) replay
	// reads on to the end.
	var last *client.RecordedEvent
	for ev, err := range s.src.cl.Replay(ctx, 0, client.Stream(s.markerStream), client.FromVersion(from)) {
		if errors.Is(err, client.ErrStreamNotFound) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("pgsource: reading %s: %w", s.markerStream, err)
		}
		e := ev
		last = &e
	}
	if last == nil {
		return nil, nil
	}
	if last.ProducerID != s.producerID {
		return nil, fmt.Errorf("%w: %s's last event is from %q, this connector is %q", ErrForeignProducer, s.markerStream, last.ProducerID, s.producerID)
	}
	m, err := DecodeMarker(last.Payload)
	if err != nil {
		return nil, fmt.Errorf("pgsource: %s at offset %d: %w", s.markerStream, last.Offset, err)
	}
	return &lastAppend{Marker: m, typ: last.Type, seq: last.ProducerSeq}, nil
}

// lastAppend is the connector's newest append in tsstore.
type lastAppend struct {
	*Marker
	typ string // the marker's event type
	seq uint64 // producer sequence of the marker, the append's last event
}
