package train

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"

	"github.com/vmihailenco/msgpack/v5"
)

const (
	// MaxTypeLen bounds event type names (tsstore's limit on event types).
	MaxTypeLen = 255
	// FenceType is the system event the server writes when a job attempt
	// starts; its payload is EncodeFence's. Types starting with '$' are
	// reserved for tsstore and cannot be registered or encoded here.
	FenceType = "$fence"
)

// A Registry maps event type names to Go types, their current schema
// version and their upcasters. It is safe for concurrent use. The fold
// (State.Apply) uses a private registry of the built-in types only, so
// nothing registered anywhere changes what a fold computes.
type Registry struct {
	mu struct {
		sync.RWMutex
		types map[string]*entry
	}
}

type entry struct {
	version uint16
	decode  func(body []byte) (Event, error) // body of the current version
	upcast  map[uint16]func(body []byte) (Event, error)
}

// DefaultRegistry holds the built-in events and whatever the program
// registers; the package-level Decode uses it.
var DefaultRegistry = NewRegistry()

// builtins is what the fold decodes with; nothing can register into it.
var builtins = NewRegistry()

// NewRegistry returns a registry holding the built-in events.
func NewRegistry() *Registry {
	r := &Registry{}
	r.mu.types = make(map[string]*entry)
	registerBuiltins(r)
	return r
}

// An Upcaster turns the body of an older schema version, From, into the
// current event E. Decode gets the raw msgpack body (the payload without
// its envelope) and must be as strict as the current decoder; Upcast
// builds one that is.
type Upcaster[E Event] struct {
	From   uint16
	Decode func(body []byte) (E, error)
}

// Upcast returns the Upcaster from version from that decodes the body
// strictly into Old, the struct as version from wrote it (kept as frozen
// history next to E), and converts it with convert. To upcast across
// several versions, compose the conversions in convert: every upcaster
// goes straight to the current version.
func Upcast[Old any, E Event](from uint16, convert func(Old) (E, error)) Upcaster[E] {
	sh := shapeOf[Old]()
	return Upcaster[E]{From: from, Decode: func(body []byte) (E, error) {
		old, err := decodeBody[Old](body, sh)
		if err != nil {
			var zero E
			return zero, err
		}
		return convert(old)
	}}
}

// Register adds event type E to r, with its upcasters from older
// versions. E must be a struct type (not a pointer) whose EventType and
// SchemaVersion have value receivers; they give the type name and the
// current version. A name may be registered once per registry
// (ErrDuplicate); the built-in names are always taken.
//
// Decoding is strict. If E encodes as a msgpack array (`msgpack:",as_array"`,
// recommended), a body must be an array of exactly E's field count; if it
// encodes as a map, a body must be a map and may not carry a key E does
// not know. Either way trailing bytes are refused. If E has a
// `Validate() error` method (value receiver), decoded and upcast values
// must pass it, and Encode refuses values that do not.
func Register[E Event](r *Registry, ups ...Upcaster[E]) error {
	rt := reflect.TypeFor[E]()
	if rt.Kind() != reflect.Struct {
		return fmt.Errorf("%w: %v is not a struct type", ErrInvalidEvent, rt)
	}
	var zero E
	typ, ver := zero.EventType(), zero.SchemaVersion()
	if err := checkHeader(typ, ver); err != nil {
		return err
	}
	sh := shapeOf[E]()
	e := &entry{version: ver, upcast: make(map[uint16]func([]byte) (Event, error), len(ups))}
	e.decode = func(body []byte) (Event, error) { return decodeBody[E](body, sh) }
	for _, u := range ups {
		if u.From == 0 || u.From >= ver || u.Decode == nil {
			return fmt.Errorf("%w: %s: upcaster from v%d to v%d", ErrInvalidEvent, typ, u.From, ver)
		}
		if e.upcast[u.From] != nil {
			return fmt.Errorf("%w: %s: two upcasters from v%d", ErrInvalidEvent, typ, u.From)
		}
		e.upcast[u.From] = func(body []byte) (Event, error) { return u.Decode(body) }
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mu.types[typ] != nil {
		return fmt.Errorf("%w: %s", ErrDuplicate, typ)
	}
	r.mu.types[typ] = e
	return nil
}

// Version returns the current schema version registered for typ.
func (r *Registry) Version(typ string) (uint16, bool) {
	if e := r.lookup(typ); e != nil {
		return e.version, true
	}
	return 0, false
}

// Types returns the registered type names, sorted.
func (r *Registry) Types() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	names := make([]string, 0, len(r.mu.types))
	for name := range r.mu.types {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

func (r *Registry) lookup(typ string) *entry {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.mu.types[typ]
}

// Decode decodes the payload of an event of type typ into the current
// version of its registered struct (a value, not a pointer), upcasting an
// older version. Errors: ErrUnknownType, *UnknownVersionError (a newer
// version, or an older one without upcaster), ErrMalformed.
func (r *Registry) Decode(typ string, payload []byte) (Event, error) {
	e := r.lookup(typ)
	if e == nil {
		return nil, fmt.Errorf("%w: %q", ErrUnknownType, typ)
	}
	return e.decodePayload(typ, payload)
}

// Decode is DefaultRegistry.Decode.
func Decode(typ string, payload []byte) (Event, error) { return DefaultRegistry.Decode(typ, payload) }

func (e *entry) decodePayload(typ string, payload []byte) (Event, error) {
	ver, body, err := splitEnvelope(payload)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrMalformed, typ, err)
	}
	var ev Event
	switch {
	case ver == e.version:
		ev, err = e.decode(body)
	case ver > e.version:
		return nil, &UnknownVersionError{Type: typ, Version: ver, Current: e.version}
	default:
		up := e.upcast[ver]
		if up == nil {
			return nil, &UnknownVersionError{Type: typ, Version: ver, Current: e.version}
		}
		ev, err = up(body)
	}
	if err == nil {
		err = validate(ev)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s v%d: %w", ErrMalformed, typ, ver, err)
	}
	return ev, nil
}

// Encode returns the type name and payload (envelope and body, see the
// package doc) of ev. ev may be a struct or a pointer to one; it need not
// be registered. Maps in the body are written with sorted keys when they
// are Params or map[string]string/bool/any; other map types in a user
// event encode in Go's map order, so prefer those (or slices) for
// deterministic bytes.
func Encode(ev Event) (typ string, payload []byte, err error) {
	if ev == nil {
		return "", nil, fmt.Errorf("%w: nil", ErrInvalidEvent)
	}
	if rv := reflect.ValueOf(ev); rv.Kind() == reflect.Pointer && rv.IsNil() {
		return "", nil, fmt.Errorf("%w: nil %v", ErrInvalidEvent, rv.Type())
	}
	typ, ver := ev.EventType(), ev.SchemaVersion()
	if err := checkHeader(typ, ver); err != nil {
		return "", nil, err
	}
	if err := validate(ev); err != nil {
		return "", nil, fmt.Errorf("%w: %s: %w", ErrInvalidEvent, typ, err)
	}
	payload, err = marshalAppend(appendEnvelope(make([]byte, 0, 64), ver), ev)
	if err != nil {
		return "", nil, fmt.Errorf("%w: %s: %w", ErrInvalidEvent, typ, err)
	}
	return typ, payload, nil
}

func checkHeader(typ string, ver uint16) error {
	switch {
	case typ == "" || len(typ) > MaxTypeLen:
		return fmt.Errorf("%w: type name must be 1..%d bytes", ErrInvalidEvent, MaxTypeLen)
	case strings.HasPrefix(typ, "$"):
		return fmt.Errorf("%w: type %q: names starting with '$' are reserved", ErrInvalidEvent, typ)
	case ver == 0:
		return fmt.Errorf("%w: %s: schema versions start at 1", ErrInvalidEvent, typ)
	}
	return nil
}

func validate(ev any) error {
	if v, ok := ev.(interface{ Validate() error }); ok {
		return v.Validate()
	}
	return nil
}

// marshalAppend appends the msgpack encoding of v to dst: shortest
// integer forms, float64 as float 64, sorted keys where supported.
func marshalAppend(dst []byte, v any) ([]byte, error) {
	buf := bytes.NewBuffer(dst)
	e := msgpack.GetEncoder()
	e.Reset(buf)
	e.UseCompactInts(true)
	e.SetSortMapKeys(true)
	err := e.Encode(v)
	msgpack.PutEncoder(e)
	return buf.Bytes(), err
}

// shape is what a struct's body must look like: a msgpack array of n
// elements ('a'), or a map ('m'); kind 0 checks nothing.
type shape struct {
	kind byte
	n    int
}

func shapeOf[T any]() shape {
	if reflect.TypeFor[T]().Kind() != reflect.Struct {
		return shape{}
	}
	var zero T
	b, err := marshalAppend(nil, &zero)
	if err != nil {
		return shape{}
	}
	kind, n, _ := containerHeader(b)
	return shape{kind: kind, n: n}
}

// containerHeader reads the array ('a') or map ('m') header at the start
// of b.
func containerHeader(b []byte) (kind byte, n int, ok bool) {
	if len(b) == 0 {
		return 0, 0, false
	}
	kind = 'a'
	switch c := b[0]; {
	case c >= 0x90 && c <= 0x9f:
		return kind, int(c & 0x0f), true
	case c >= 0x80 && c <= 0x8f:
		return 'm', int(c & 0x0f), true
	case c == 0xde || c == 0xdf:
		kind = 'm'
		fallthrough
	case c == 0xdc || c == 0xdd:
		if c&1 == 0 && len(b) >= 3 { // array 16, map 16
			return kind, int(binary.BigEndian.Uint16(b[1:])), true
		}
		if c&1 == 1 && len(b) >= 5 { // array 32, map 32
			return kind, int(binary.BigEndian.Uint32(b[1:])), true
		}
	}
	return 0, 0, false
}

var errTrailing = errors.New("trailing bytes")

// decodeBody decodes body strictly into a T of shape sh.
func decodeBody[T any](body []byte, sh shape) (T, error) {
	var v T
	if sh.kind != 0 {
		kind, n, ok := containerHeader(body)
		switch {
		case !ok || kind != sh.kind:
			if sh.kind == 'm' {
				return v, errors.New("body is not a msgpack map")
			}
			return v, errors.New("body is not a msgpack array")
		case kind == 'a' && n != sh.n:
			return v, fmt.Errorf("body has %d fields, want %d", n, sh.n)
		}
	}
	r := bytes.NewReader(body)
	d := msgpack.GetDecoder()
	d.Reset(r)
	d.DisallowUnknownFields(true)
	err := d.Decode(&v)
	msgpack.PutDecoder(d)
	if err == nil && r.Len() != 0 {
		err = errTrailing
	}
	return v, err
}
