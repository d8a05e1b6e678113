package train

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"math"
	"slices"
	"sync"
)

// FoldVersion is the version of the fold's semantics and of the snapshot
// layout. Bump it whenever Apply would compute a different State from the
// same inputs, or the layout changes: snapshots of another version are
// refused (ErrFoldVersion), and the holder folds from zero again.
const FoldVersion = 1

// MaxPending bounds State.Pending: the checkpoints of the MaxPending
// highest steps are kept; a save for a lower step is dropped. Part of the
// fold semantics (a change bumps FoldVersion).
const MaxPending = 4

// Input is one stored event as the fold sees it.
type Input struct {
	Offset    uint64
	Timestamp int64 // unix nanoseconds
	Type      string
	Payload   []byte // raw, as stored
}

// Status is the run's lifecycle state. Frozen values.
type Status uint8

const (
	StatusNew      Status = 0 // nothing started it yet
	StatusRunning  Status = 1 // TrainingStarted or a fence
	StatusFinished Status = 2 // TrainingFinished
	StatusAborted  Status = 3 // TrainingAborted
)

func (s Status) String() string {
	switch s {
	case StatusNew:
		return "new"
	case StatusRunning:
		return "running"
	case StatusFinished:
		return "finished"
	case StatusAborted:
		return "aborted"
	}
	return fmt.Sprintf("Status(%d)", uint8(s))
}

// RankStatus is a rank's membership state. Frozen values.
type RankStatus uint8

const (
	RankLive   RankStatus = 1 // joined (or reported) and not gone
	RankFailed RankStatus = 2 // NodeFailed
	RankLeft   RankStatus = 3 // NodeLeft
)

func (s RankStatus) String() string {
	switch s {
	case RankLive:
		return "live"
	case RankFailed:
		return "failed"
	case RankLeft:
		return "left"
	}
	return fmt.Sprintf("RankStatus(%d)", uint8(s))
}

// RankState is what the fold knows of one rank in the current attempt.
type RankState struct {
	_msgpack struct{} `msgpack:",as_array"`
	Rank     int
	Host     string
	Status   RankStatus
	Reason   string // of NodeLeft or NodeFailed
	LastStep uint64 // highest step of its BatchCompleted and CheckpointSaved
}

// CheckpointFile is one rank's save of a checkpoint.
type CheckpointFile struct {
	_msgpack struct{} `msgpack:",as_array"`
	Rank     int
	URI      string
	Size     uint64
	SHA256   string
}

// Checkpoint is the checkpoint of one step: pending until every live
// rank has saved it, then complete.
type Checkpoint struct {
	_msgpack   struct{} `msgpack:",as_array"`
	Step       uint64
	Generation uint64           // the attempt that saved it
	Files      []CheckpointFile // one per rank that saved it, by rank
	Offset     uint64           // offset of the input that completed it; 0 while pending
	Majority   string           // the most common SHA256 (ties: the smallest); "" while pending
	Disagree   []int            // ranks whose SHA256 is not Majority, ascending; nil if none
}

// NaNAt locates the first BatchCompleted whose loss was NaN or ±Inf.
type NaNAt struct {
	_msgpack struct{} `msgpack:",as_array"`
	Step     uint64
	Offset   uint64
	Rank     int
	Loss     float64 // NaN, +Inf or -Inf
}

// State is a run folded from its events (see the package doc for the
// rules). Fields marked "attempt" are reset by a fence of a new
// generation; the others span the run. A State is not safe for concurrent
// use.
type State struct {
	_msgpack        struct{} `msgpack:",as_array"`
	Run             string
	Generation      uint64 // of the last fence; 0 before any
	Events          uint64 // inputs applied or skipped
	Skipped         uint64 // inputs passed to Skip
	LastOffset      uint64
	LastTimestamp   int64
	Status          Status
	StatusReason    string // of TrainingFinished or TrainingAborted
	Model           string // TrainingStarted
	ConfigHash      string
	WorldSize       int
	Hyperparameters Params // TrainingStarted, then HyperparameterChanged
	Epoch           uint64 // attempt: last epoch event, or the epoch of the batch at LossStep
	Batch           uint64 // attempt: batch of the BatchCompleted at LossStep
	Step            uint64 // attempt: highest step of any event
	MaxStep         uint64 // highest step of any event in the run
	LossStep        uint64 // attempt: step of the last BatchCompleted not below an earlier one
	Loss            float64
	LearningRate    float64
	Batches         uint64       // BatchCompleted events
	Ranks           []RankState  // attempt: by rank
	LastCheckpoint  *Checkpoint  // the checkpoint that completed last; nil if none
	Pending         []Checkpoint // attempt: incomplete checkpoints by step, at most MaxPending
	FirstNaN        *NaNAt       // nil if no NaN or Inf loss yet
	Hash            [32]byte     `msgpack:"-"` // chain over every input
	h               hash.Hash    // reused by Apply
	scratch         []byte       // reused by Apply
}

// NewState returns the state of run before any event.
func NewState(run string) *State { return &State{Run: run} }

// Rank returns the state of rank r in the current attempt.
func (s *State) Rank(r int) (RankState, bool) {
	i, ok := s.rankIndex(r)
	if !ok {
		return RankState{}, false
	}
	return s.Ranks[i], true
}

func (s *State) rankIndex(r int) (int, bool) {
	return slices.BinarySearchFunc(s.Ranks, r, func(x RankState, r int) int { return x.Rank - r })
}

// Chain returns the hash that follows prev when in is applied:
//
//	SHA-256(prev || offset || timestamp || len(type) || type || len(payload) || payload)
//
// with offset and timestamp as 8-byte big-endian integers and the lengths
// as 4-byte big-endian integers. The hash of a state that has applied
// nothing is 32 zero bytes. Frozen.
func Chain(prev [32]byte, in Input) [32]byte {
	c := hashers.Get().(*hasher)
	defer hashers.Put(c)
	b := append(c.head[:0], prev[:]...)
	b = binary.BigEndian.AppendUint64(b, in.Offset)
	b = binary.BigEndian.AppendUint64(b, uint64(in.Timestamp))
	b = binary.BigEndian.AppendUint32(b, uint32(len(in.Type)))
	b = append(b, in.Type...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(in.Payload)))
	c.head = b[:0]
	c.h.Reset()
	c.h.Write(b)
	c.h.Write(in.Payload)
	c.h.Sum(c.sum[:0])
	return c.sum
}

type hasher struct {
	h    hash.Hash
	head []byte
	sum  [32]byte
}

var hashers = sync.Pool{New: func() any {
	return &hasher{h: sha256.New(), head: make([]byte, 0, 32+8+8+4+MaxTypeLen+4)}
}}

// Snapshot layout (FoldVersion 1), a msgpack array of 3:
//
//	0x93 | FoldVersion (msgpack uint) | 0xc4 0x20 Hash (32 bytes) | State fields (msgpack array)
const (
	snapshotArray = 0x93
	mpBin8        = 0xc4
)

// stateBody is State without its methods: msgpack would call
// MarshalBinary on a State.
type stateBody State

var stateShape = shapeOf[stateBody]()

// MarshalBinary returns the snapshot of s: the same state gives the same
// bytes on every machine (no map order leaks; NaNs are canonical).
func (s *State) MarshalBinary() ([]byte, error) {
	b := appendEnvelope(nil, FoldVersion)
	b[0] = snapshotArray
	b = append(append(b, mpBin8, 32), s.Hash[:]...)
	b, err := marshalAppend(b, (*stateBody)(s))
	if err != nil {
		return nil, fmt.Errorf("train: snapshot of %q: %w", s.Run, err)
	}
	return b, nil
}

// Clone returns a deep copy of s. (A plain copy of a State shares its
// slices, maps and pointers with the original.)
func (s *State) Clone() *State {
	b, err := s.MarshalBinary()
	if err != nil {
		panic(err) // a State always encodes
	}
	c, err := UnmarshalState(b)
	if err != nil {
		panic(err) // and decodes what it encoded
	}
	return c
}

// UnmarshalState decodes a snapshot strictly. A snapshot of another
// FoldVersion is ErrFoldVersion; anything else that does not decode, or
// breaks the State's invariants, is ErrMalformed.
func UnmarshalState(b []byte) (*State, error) {
	if len(b) == 0 || b[0] != snapshotArray {
		return nil, fmt.Errorf("%w: snapshot is not a msgpack array of 3", ErrMalformed)
	}
	v, n, ok := readUint(b[1:])
	if !ok {
		return nil, fmt.Errorf("%w: snapshot fold version is not an integer", ErrMalformed)
	}
	if v != FoldVersion {
		return nil, fmt.Errorf("%w: snapshot of fold version %d, this is %d", ErrFoldVersion, v, FoldVersion)
	}
	b = b[1+n:]
	if len(b) < 34 || b[0] != mpBin8 || b[1] != 32 {
		return nil, fmt.Errorf("%w: snapshot hash is not 32 bytes", ErrMalformed)
	}
	body, err := decodeBody[stateBody](b[34:], stateShape)
	st := State(body)
	if err == nil {
		err = st.check()
	}
	if err != nil {
		return nil, fmt.Errorf("%w: snapshot: %w", ErrMalformed, err)
	}
	copy(st.Hash[:], b[2:34])
	return &st, nil
}

// check verifies the invariants Apply relies on.
func (s *State) check() error {
	if s.Status > StatusAborted {
		return fmt.Errorf("status %d", s.Status)
	}
	if int64(s.WorldSize) < 0 || int64(s.WorldSize) > MaxRank {
		return fmt.Errorf("world size %d", s.WorldSize)
	}
	for i, r := range s.Ranks {
		if r.Rank < 0 || int64(r.Rank) > MaxRank || r.Status < RankLive || r.Status > RankLeft ||
			i > 0 && r.Rank <= s.Ranks[i-1].Rank {
			return fmt.Errorf("rank %d (%d of %d) out of order or invalid", r.Rank, i, len(s.Ranks))
		}
	}
	if len(s.Pending) > MaxPending {
		return fmt.Errorf("%d pending checkpoints", len(s.Pending))
	}
	for i := range s.Pending {
		if i > 0 && s.Pending[i].Step <= s.Pending[i-1].Step {
			return errors.New("pending checkpoints out of order")
		}
		if err := s.Pending[i].check(); err != nil {
			return err
		}
	}
	if s.LastCheckpoint != nil {
		return s.LastCheckpoint.check()
	}
	return nil
}

func (c *Checkpoint) check() error {
	for i, f := range c.Files {
		if f.Rank < 0 || int64(f.Rank) > MaxRank || i > 0 && f.Rank <= c.Files[i-1].Rank {
			return fmt.Errorf("checkpoint %d: files out of order", c.Step)
		}
	}
	return nil
}

// canon returns f with every NaN replaced by the one NaN math.NaN
// returns, so NaN payload bits never reach a snapshot.
func canon(f float64) float64 {
	if math.IsNaN(f) {
		return math.NaN()
	}
	return f
}
