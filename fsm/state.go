package fsm

import (
	"maps"

	"github.com/tsstore/tsstore/record"
)

// DedupWindows is how many recent appends per producer keep their offsets,
// so that a retry of any of them returns the original result. Older retries
// are still never written twice; they get DuplicateSequenceError.
const DedupWindows = 8

// StreamState is what the FSM knows of one stream.
type StreamState struct {
	_msgpack      struct{} `msgpack:",as_array"`
	Version       uint64   // events in the stream
	FirstOffset   uint64
	LastOffset    uint64
	LastTimestamp int64
}

// Window is a run of one producer's consecutive events in one batch: both
// their sequence numbers and their offsets are contiguous.
type Window struct {
	_msgpack    struct{} `msgpack:",as_array"`
	FirstSeq    uint64
	LastSeq     uint64
	FirstOffset uint64
	RaftIndex   uint64
	Timestamp   int64
}

// ProducerState is the dedup state of one producer.
type ProducerState struct {
	_msgpack struct{} `msgpack:",as_array"`
	LastSeq  uint64
	Windows  []Window // oldest first, at most DedupWindows
}

// Producer expiry. A producer whose last append is more than the entry's
// ProducerTTL older than the entry being applied is treated as unknown:
// its next append must start a new sequence at 1, and anything else is a
// sequence gap (expected 1). The decision depends only on the entry and on
// state that every replica has, so replicas agree; whether the producer is
// still in Producers or already swept (Processor.sweepProducers, at any
// time, on any replica) makes no difference to it, which is why the sweep
// needs no Raft command of its own. A new sequence drops the producer's old
// dedup windows (applyBatch), so an old retry can never be answered with
// another sequence's offsets.

// expired reports whether p is unknown at timestamp ts under ttl.
func (p *ProducerState) expired(ts, ttl int64) bool {
	return ttl > 0 && len(p.Windows) > 0 && ts-p.Windows[len(p.Windows)-1].Timestamp > ttl
}

// State is everything the FSM derives from the log, plus the node table.
// Streams and Producers are a pure function of the log's records, which is
// what lets a restarted node rebuild them from a checkpoint and the log.
//
// It is a msgpack array of the fields in order; Members, Runs and
// Retention are optional trailing elements, left out when empty (and all
// before the last present one written), so a state without them has the
// frozen 5-element format of the first version (retention.go).
type State struct {
	NextOffset    uint64
	LastTimestamp int64
	Streams       map[string]*StreamState
	Producers     map[string]*ProducerState
	Nodes         map[string]string   // node id -> client API address
	Members       Membership          // incarnations and removal tombstones
	Runs          map[string]*RunInfo // training runs by stream name (runs.go)
	Retention     Retention           // policies, first kept offset, segment manifest (retention.go)
}

func newState() *State {
	return &State{
		Streams:   map[string]*StreamState{},
		Producers: map[string]*ProducerState{},
		Nodes:     map[string]string{},
		Runs:      map[string]*RunInfo{},
	}
}

// fillMaps makes the nil maps of a decoded state (msgpack decodes an
// empty or absent map as nil) empty ones.
func (s *State) fillMaps() {
	if s.Streams == nil {
		s.Streams = map[string]*StreamState{}
	}
	if s.Producers == nil {
		s.Producers = map[string]*ProducerState{}
	}
	if s.Nodes == nil {
		s.Nodes = map[string]string{}
	}
	if s.Runs == nil {
		s.Runs = map[string]*RunInfo{}
	}
}

// clone deep-copies the state for a snapshot. Cost is linear in streams and
// producers, not in events.
func (s *State) clone() *State {
	c := &State{
		NextOffset:    s.NextOffset,
		LastTimestamp: s.LastTimestamp,
		Streams:       make(map[string]*StreamState, len(s.Streams)),
		Producers:     make(map[string]*ProducerState, len(s.Producers)),
		Nodes:         maps.Clone(s.Nodes),
		Members:       s.Members.clone(),
		Runs:          make(map[string]*RunInfo, len(s.Runs)),
		Retention:     s.Retention.clone(),
	}
	for k, v := range s.Runs {
		c.Runs[k] = v.clone()
	}
	// One allocation per table rather than one per entry: the clone runs
	// on Raft's FSM goroutine (Snapshot, Compact, Thin), and appends wait
	// for it. Every copy is its own element; windows are cut with their
	// capacity at their length, so an append to one reallocates instead of
	// writing over its neighbour's.
	streams := make([]StreamState, 0, len(s.Streams))
	for k, v := range s.Streams {
		streams = append(streams, *v)
		c.Streams[k] = &streams[len(streams)-1]
	}
	nw := 0
	for _, v := range s.Producers {
		nw += len(v.Windows)
	}
	producers := make([]ProducerState, 0, len(s.Producers))
	windows := make([]Window, 0, nw)
	for k, v := range s.Producers {
		from := len(windows)
		windows = append(windows, v.Windows...)
		producers = append(producers, ProducerState{LastSeq: v.LastSeq, Windows: windows[from:len(windows):len(windows)]})
		c.Producers[k] = &producers[len(producers)-1]
	}
	return c
}

// applyBatch rolls the state forward over one batch. Apply and the
// recovery scan both use it, so a restarted node derives exactly the state
// the running node had.
func (s *State) applyBatch(b record.Batch) error {
	h := b.Header()
	it := b.Records()
	var r record.Record
	var cur *ProducerState
	var curID []byte
	for it.Next(&r) {
		if len(r.Stream) > 0 && r.StreamVersion > 0 {
			st := s.Streams[string(r.Stream)]
			if st == nil {
				st = &StreamState{FirstOffset: r.Offset}
				s.Streams[string(r.Stream)] = st
			}
			st.Version = r.StreamVersion
			st.LastOffset = r.Offset
			st.LastTimestamp = h.Timestamp
		}
		if len(r.Type) > 0 && r.Type[0] == '$' {
			s.applyRunRecord(string(r.Stream), string(r.Type), r.Payload, r.Offset, h.Timestamp)
		}
		if len(r.ProducerID) == 0 {
			cur, curID = nil, nil
			continue
		}
		if cur != nil && string(curID) == string(r.ProducerID) {
			w := &cur.Windows[len(cur.Windows)-1]
			if w.LastSeq+1 == r.ProducerSeq && w.FirstOffset+(w.LastSeq-w.FirstSeq)+1 == r.Offset {
				w.LastSeq = r.ProducerSeq
				cur.LastSeq = r.ProducerSeq
				continue
			}
		}
		p := s.Producers[string(r.ProducerID)]
		if p == nil {
			p = &ProducerState{}
			s.Producers[string(r.ProducerID)] = p
		}
		if r.ProducerSeq <= p.LastSeq {
			// A new sequence (the producer had expired): its old windows
			// describe other events.
			p.Windows = p.Windows[:0]
		}
		if len(p.Windows) == DedupWindows {
			copy(p.Windows, p.Windows[1:])
			p.Windows = p.Windows[:DedupWindows-1]
		}
		p.Windows = append(p.Windows, Window{
			FirstSeq: r.ProducerSeq, LastSeq: r.ProducerSeq, FirstOffset: r.Offset,
			RaftIndex: h.RaftIndex, Timestamp: h.Timestamp,
		})
		p.LastSeq = r.ProducerSeq
		cur, curID = p, r.ProducerID
	}
	if err := it.Err(); err != nil {
		return err
	}
	s.NextOffset = h.NextOffset()
	s.LastTimestamp = h.Timestamp
	return nil
}

// streamVersion is a stream's current version (0: no stream).
func (s *State) streamVersion(name string) uint64 {
	if st := s.Streams[name]; st != nil {
		return st.Version
	}
	return 0
}
