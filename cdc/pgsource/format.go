package pgsource

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/vmihailenco/msgpack/v5"
)

// Event types the connector writes. They are part of the stored format:
// frozen.
const (
	TypeRowInserted = "RowInserted"
	TypeRowUpdated  = "RowUpdated"
	TypeRowDeleted  = "RowDeleted"
	TypeTruncated   = "TableTruncated"
	TypeRowSnapshot = "RowSnapshot" // a row copied by the initial snapshot
	TypeSchema      = "SchemaChanged"

	// Markers, in the database's stream, one per append.
	TypeTransaction       = "TransactionCommitted"
	TypeSlotCreated       = "SlotCreated"
	TypeSnapshotChunk     = "SnapshotChunk"
	TypeSnapshotCompleted = "SnapshotCompleted"
)

// Ops of Change.Op.
const (
	OpInsert   = "insert"
	OpUpdate   = "update"
	OpDelete   = "delete"
	OpTruncate = "truncate"
	OpSnapshot = "snapshot"
)

// Column describes one column of a table as PostgreSQL reported it.
type Column struct {
	Name    string `msgpack:"name" json:"name"`
	Type    string `msgpack:"type" json:"type"` // PostgreSQL type name, e.g. "int8", "timestamptz"
	OID     uint32 `msgpack:"oid" json:"oid"`
	TypeMod int32  `msgpack:"typmod" json:"typmod"`
	Key     bool   `msgpack:"key" json:"key"` // part of the replica identity
}

// Change is the payload (msgpack) of a row event: RowInserted, RowUpdated,
// RowDeleted, TableTruncated, RowSnapshot.
//
// Values are typed: bool; int64 (int2, int4, int8, oid); float64 (float4,
// float8); string (text, varchar, bpchar, name, numeric - kept exact as its
// decimal text -, uuid, json, jsonb, inet, cidr, macaddr, interval, time,
// timetz, money, xml, bit, varbit); []byte (bytea); time.Time (timestamp,
// timestamptz, date; msgpack's timestamp extension; ±infinity become the
// strings "infinity" and "-infinity"); arrays of those as lists; nil for
// NULL. A column whose value PostgreSQL did not send (an unchanged TOASTed
// value of an update) is listed in Unchanged and absent from New.
type Change struct {
	Table      string         `msgpack:"table" json:"table"` // schema.table
	Op         string         `msgpack:"op" json:"op"`
	Columns    []Column       `msgpack:"columns" json:"columns"`
	Old        map[string]any `msgpack:"old,omitempty" json:"old,omitempty"` // update and delete: the key, or the whole row under REPLICA IDENTITY FULL
	New        map[string]any `msgpack:"new,omitempty" json:"new,omitempty"` // insert, update, snapshot
	Unchanged  []string       `msgpack:"unchanged,omitempty" json:"unchanged,omitempty"`
	LSN        string         `msgpack:"lsn" json:"lsn"`               // WAL position of the change (snapshot: the slot's consistent point)
	CommitLSN  string         `msgpack:"commit_lsn" json:"commit_lsn"` // of the transaction (snapshot: the consistent point)
	Xid        uint32         `msgpack:"xid" json:"xid"`
	CommitTime time.Time      `msgpack:"commit_time" json:"commit_time"`
	Index      int            `msgpack:"index" json:"index"` // position of the change in its transaction (or snapshot chunk), from 0
}

// Schema is the payload (msgpack) of SchemaChanged: the table's columns
// as of the first change after PostgreSQL reported them.
type Schema struct {
	Table           string   `msgpack:"table" json:"table"`
	Columns         []Column `msgpack:"columns" json:"columns"`
	ReplicaIdentity string   `msgpack:"replica_identity" json:"replica_identity"` // d(efault), n(othing), f(ull), i(ndex)
	LSN             string   `msgpack:"lsn" json:"lsn"`                           // commit LSN of the transaction it came with
}

// Marker is the payload (msgpack) of the last event of every append, in
// the database's stream: it records which transaction (or snapshot chunk)
// the append holds, and so where the connector resumes.
type Marker struct {
	Slot       string    `msgpack:"slot"`
	Xid        uint32    `msgpack:"xid,omitempty"`
	CommitLSN  uint64    `msgpack:"commit_lsn"` // the transaction's; for slot and snapshot markers, the consistent point
	EndLSN     uint64    `msgpack:"end_lsn"`    // confirmed to PostgreSQL once the append is acknowledged
	CommitTime time.Time `msgpack:"commit_time"`
	Changes    int       `msgpack:"changes"`
	Tables     []string  `msgpack:"tables"`
}

// Meta is the metadata (JSON) of every event the connector writes.
type Meta struct {
	CommitLSN  string    `json:"commit_lsn"`
	Xid        uint32    `json:"xid,omitempty"`
	CommitTime time.Time `json:"commit_time"`
	Slot       string    `json:"slot"`
}

func encode(v any) []byte {
	b, err := msgpack.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("pgsource: encoding %T: %v", v, err)) // values come from decodeValue: always encodable
	}
	return b
}

func encodeMeta(m Meta) []byte {
	b, _ := json.Marshal(m) // plain fields: never fails
	return b
}

// DecodeChange decodes a row event's payload.
func DecodeChange(p []byte) (*Change, error) {
	var c Change
	if err := msgpack.Unmarshal(p, &c); err != nil {
		return nil, err
	}
	return &c, nil
}

// DecodeMarker decodes a marker's payload.
func DecodeMarker(p []byte) (*Marker, error) {
	var m Marker
	if err := msgpack.Unmarshal(p, &m); err != nil {
		return nil, err
	}
	return &m, nil
}

// DecodeSchema decodes a SchemaChanged payload.
func DecodeSchema(p []byte) (*Schema, error) {
	var s Schema
	if err := msgpack.Unmarshal(p, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// kind is how a type's text form becomes a typed value.
type kind int

const (
	kBool kind = iota
	kInt
	kFloat
	kString
	kBytes
	kTime
)

// scalarKinds are the encodable base types by OID, with their names.
var scalarKinds = map[uint32]struct {
	name string
	k    kind
}{
	pgtype.BoolOID: {"bool", kBool}, pgtype.Int2OID: {"int2", kInt}, pgtype.Int4OID: {"int4", kInt},
	pgtype.Int8OID: {"int8", kInt}, pgtype.OIDOID: {"oid", kInt}, pgtype.Float4OID: {"float4", kFloat},
	pgtype.Float8OID: {"float8", kFloat}, pgtype.NumericOID: {"numeric", kString}, pgtype.TextOID: {"text", kString},
	pgtype.VarcharOID: {"varchar", kString}, pgtype.BPCharOID: {"bpchar", kString}, pgtype.NameOID: {"name", kString},
	pgtype.QCharOID: {"char", kString}, pgtype.UUIDOID: {"uuid", kString}, pgtype.JSONOID: {"json", kString},
	pgtype.JSONBOID: {"jsonb", kString}, pgtype.InetOID: {"inet", kString}, pgtype.CIDROID: {"cidr", kString},
	pgtype.MacaddrOID: {"macaddr", kString}, pgtype.IntervalOID: {"interval", kString}, pgtype.TimeOID: {"time", kString},
	1266: {"timetz", kString}, 790: {"money", kString}, pgtype.XMLOID: {"xml", kString}, pgtype.BitOID: {"bit", kString},
	pgtype.VarbitOID: {"varbit", kString}, pgtype.ByteaOID: {"bytea", kBytes}, pgtype.TimestampOID: {"timestamp", kTime},
	pgtype.TimestamptzOID: {"timestamptz", kTime}, pgtype.DateOID: {"date", kTime},
}

// arrayElem maps the array types that are encodable to their element type.
var arrayElem = map[uint32]uint32{
	pgtype.BoolArrayOID: pgtype.BoolOID, pgtype.Int2ArrayOID: pgtype.Int2OID, pgtype.Int4ArrayOID: pgtype.Int4OID,
	pgtype.Int8ArrayOID: pgtype.Int8OID, pgtype.Float4ArrayOID: pgtype.Float4OID, pgtype.Float8ArrayOID: pgtype.Float8OID,
	pgtype.NumericArrayOID: pgtype.NumericOID, pgtype.TextArrayOID: pgtype.TextOID, pgtype.VarcharArrayOID: pgtype.VarcharOID,
	pgtype.UUIDArrayOID: pgtype.UUIDOID, pgtype.TimestamptzArrayOID: pgtype.TimestamptzOID, pgtype.TimestampArrayOID: pgtype.TimestampOID,
	pgtype.DateArrayOID: pgtype.DateOID, pgtype.JSONBArrayOID: pgtype.JSONBOID,
}

// typeName names oid if it is encodable; ok is false otherwise.
func typeName(oid uint32) (string, bool) {
	if s, ok := scalarKinds[oid]; ok {
		return s.name, true
	}
	if e, ok := arrayElem[oid]; ok {
		return "_" + scalarKinds[e].name, true
	}
	return "", false
}

var typeMap = pgtype.NewMap() // only its read-only lookups are used

// decodeValue turns PostgreSQL's text form of a value of type oid into a
// typed Go value (see Change). The type must be encodable (typeName).
func decodeValue(oid uint32, text []byte) (any, error) {
	if elem, ok := arrayElem[oid]; ok {
		return decodeArray(oid, elem, text)
	}
	s, ok := scalarKinds[oid]
	if !ok {
		return nil, fmt.Errorf("type oid %d is not encodable", oid)
	}
	str := string(text)
	switch s.k {
	case kBool:
		return str == "t", nil
	case kInt:
		return strconv.ParseInt(str, 10, 64)
	case kFloat:
		return strconv.ParseFloat(str, 64)
	case kString:
		return str, nil
	case kBytes:
		if !strings.HasPrefix(str, `\x`) {
			return nil, fmt.Errorf("bytea value not in hex format (set bytea_output = hex)")
		}
		return hex.DecodeString(str[2:])
	case kTime:
		if str == "infinity" || str == "-infinity" {
			return str, nil
		}
		var v any
		var err error
		switch oid {
		case pgtype.DateOID:
			var d pgtype.Date
			err = typeMap.Scan(oid, pgtype.TextFormatCode, text, &d)
			v = d.Time.UTC()
		case pgtype.TimestampOID:
			var ts pgtype.Timestamp
			err = typeMap.Scan(oid, pgtype.TextFormatCode, text, &ts)
			v = ts.Time.UTC()
		default:
			var ts pgtype.Timestamptz
			err = typeMap.Scan(oid, pgtype.TextFormatCode, text, &ts)
			v = ts.Time.UTC()
		}
		return v, err
	}
	return nil, fmt.Errorf("type oid %d: unknown kind", oid)
}

// decodeArray decodes a one-dimensional array's text form element by
// element with the scalar rules.
func decodeArray(oid, elem uint32, text []byte) (any, error) {
	var parts []*string
	if err := typeMap.Scan(oid, pgtype.TextFormatCode, text, &parts); err != nil {
		return nil, fmt.Errorf("array: %w", err)
	}
	out := make([]any, len(parts))
	for i, p := range parts {
		if p == nil {
			continue
		}
		v, err := decodeValue(elem, []byte(*p))
		if err != nil {
			return nil, err
		}
		out[i] = v
	}
	return out, nil
}

// fmtLSN formats an LSN as PostgreSQL does (X/X).
func fmtLSN(l uint64) string { return fmt.Sprintf("%X/%X", uint32(l>>32), uint32(l)) }

// View is the marker with its LSNs in PostgreSQL's X/X form, for display.
func (m *Marker) View() map[string]any {
	return map[string]any{"slot": m.Slot, "xid": m.Xid, "commit_lsn": fmtLSN(m.CommitLSN), "end_lsn": fmtLSN(m.EndLSN),
		"commit_time": m.CommitTime, "changes": m.Changes, "tables": m.Tables}
}
