package train

import (
	"fmt"
	"maps"
	"math"
	"slices"

	"github.com/vmihailenco/msgpack/v5"
)

// Event is a typed training event. EventType is the tsstore event type the
// event is stored under (the plain struct name for the built-in types, so
// readers can filter by type); SchemaVersion is the version of the body
// layout, carried in the payload envelope (see the package doc).
//
// Both methods must have value receivers and must not depend on the
// value: Register calls them on the zero value.
type Event interface {
	EventType() string
	SchemaVersion() uint16
}

// MaxRank bounds ranks and world sizes, so an event folds to the same
// state on every platform whatever the width of int.
const MaxRank = math.MaxInt32

// Params is a set of named hyperparameters. It encodes with its keys in
// increasing byte order, so equal maps give equal bytes.
type Params map[string]float64

// EncodeMsgpack writes p as a msgpack map with sorted keys (nil as nil).
func (p Params) EncodeMsgpack(e *msgpack.Encoder) error {
	if p == nil {
		return e.EncodeNil()
	}
	if err := e.EncodeMapLen(len(p)); err != nil {
		return err
	}
	for _, k := range slices.Sorted(maps.Keys(p)) {
		if err := e.EncodeString(k); err != nil {
			return err
		}
		if err := e.EncodeFloat64(p[k]); err != nil {
			return err
		}
	}
	return nil
}

// The built-in events. Each encodes as a msgpack array of its fields in
// the order declared here; that order is frozen for the event's current
// schema version. A change of layout is a new version with an upcaster
// from the old one (see batchCompletedV1).

// TrainingStarted opens a run (or a job attempt).
type TrainingStarted struct {
	_msgpack        struct{} `msgpack:",as_array"`
	Model           string
	ConfigHash      string
	WorldSize       int
	Hyperparameters Params
}

// NodeJoined: rank Rank runs on Host and is live.
type NodeJoined struct {
	_msgpack struct{} `msgpack:",as_array"`
	Rank     int
	Host     string
}

// NodeLeft: rank Rank left the job in an orderly way.
type NodeLeft struct {
	_msgpack struct{} `msgpack:",as_array"`
	Rank     int
	Host     string
	Reason   string
}

// NodeFailed: rank Rank was lost.
type NodeFailed struct {
	_msgpack struct{} `msgpack:",as_array"`
	Rank     int
	Host     string
	Reason   string
}

// EpochStarted marks the start of an epoch.
type EpochStarted struct {
	_msgpack struct{} `msgpack:",as_array"`
	Epoch    uint64
}

// EpochCompleted marks the end of an epoch.
type EpochCompleted struct {
	_msgpack struct{} `msgpack:",as_array"`
	Epoch    uint64
}

// BatchCompleted is one rank's report of one batch (schema version 2).
// Loss is the rank's local loss; it may be NaN or ±Inf.
type BatchCompleted struct {
	_msgpack     struct{} `msgpack:",as_array"`
	Rank         int
	Epoch        uint64
	Batch        uint64
	Step         uint64 // global optimizer step
	Loss         float64
	LearningRate float64
	Samples      uint64 // samples in the batch; 0 when upcast from v1
}

// batchCompletedV1 is BatchCompleted as schema version 1 wrote it (frozen
// history): no Samples, and the loss as a float32.
type batchCompletedV1 struct {
	_msgpack     struct{} `msgpack:",as_array"`
	Rank         int
	Epoch        uint64
	Batch        uint64
	Step         uint64
	Loss         float32
	LearningRate float64
}

func upcastBatchCompletedV1(v batchCompletedV1) (BatchCompleted, error) {
	return BatchCompleted{Rank: v.Rank, Epoch: v.Epoch, Batch: v.Batch, Step: v.Step,
		Loss: float64(v.Loss), LearningRate: v.LearningRate}, nil
}

// GradientSync reports one all-reduce of Bytes over Ranks ranks.
type GradientSync struct {
	_msgpack struct{} `msgpack:",as_array"`
	Step     uint64
	Ranks    int
	Bytes    uint64
	Micros   uint64
}

// WeightUpdateApplied: the optimizer applied step Step; ParamHash
// identifies the resulting parameters.
type WeightUpdateApplied struct {
	_msgpack  struct{} `msgpack:",as_array"`
	Step      uint64
	ParamHash string
}

// CheckpointSaved: rank Rank saved its checkpoint of step Step.
type CheckpointSaved struct {
	_msgpack struct{} `msgpack:",as_array"`
	Step     uint64
	Rank     int
	URI      string
	Size     uint64 // bytes
	SHA256   string // hex
}

// HyperparameterChanged: Name went from Old to New at step Step.
type HyperparameterChanged struct {
	_msgpack struct{} `msgpack:",as_array"`
	Step     uint64
	Name     string
	Old      float64
	New      float64
}

// TrainingFinished: the run ended normally at step Step.
type TrainingFinished struct {
	_msgpack struct{} `msgpack:",as_array"`
	Step     uint64
	Reason   string
}

// TrainingAborted: the run was stopped at step Step.
type TrainingAborted struct {
	_msgpack struct{} `msgpack:",as_array"`
	Step     uint64
	Reason   string
}

func (TrainingStarted) EventType() string       { return "TrainingStarted" }
func (NodeJoined) EventType() string            { return "NodeJoined" }
func (NodeLeft) EventType() string              { return "NodeLeft" }
func (NodeFailed) EventType() string            { return "NodeFailed" }
func (EpochStarted) EventType() string          { return "EpochStarted" }
func (EpochCompleted) EventType() string        { return "EpochCompleted" }
func (BatchCompleted) EventType() string        { return "BatchCompleted" }
func (batchCompletedV1) EventType() string      { return "BatchCompleted" }
func (GradientSync) EventType() string          { return "GradientSync" }
func (WeightUpdateApplied) EventType() string   { return "WeightUpdateApplied" }
func (CheckpointSaved) EventType() string       { return "CheckpointSaved" }
func (HyperparameterChanged) EventType() string { return "HyperparameterChanged" }
func (TrainingFinished) EventType() string      { return "TrainingFinished" }
func (TrainingAborted) EventType() string       { return "TrainingAborted" }

func (TrainingStarted) SchemaVersion() uint16       { return 1 }
func (NodeJoined) SchemaVersion() uint16            { return 1 }
func (NodeLeft) SchemaVersion() uint16              { return 1 }
func (NodeFailed) SchemaVersion() uint16            { return 1 }
func (EpochStarted) SchemaVersion() uint16          { return 1 }
func (EpochCompleted) SchemaVersion() uint16        { return 1 }
func (BatchCompleted) SchemaVersion() uint16        { return 2 }
func (batchCompletedV1) SchemaVersion() uint16      { return 1 }
func (GradientSync) SchemaVersion() uint16          { return 1 }
func (WeightUpdateApplied) SchemaVersion() uint16   { return 1 }
func (CheckpointSaved) SchemaVersion() uint16       { return 1 }
func (HyperparameterChanged) SchemaVersion() uint16 { return 1 }
func (TrainingFinished) SchemaVersion() uint16      { return 1 }
func (TrainingAborted) SchemaVersion() uint16       { return 1 }

// Validate reports a world size outside 0..MaxRank.
func (e TrainingStarted) Validate() error { return checkRank("world size", e.WorldSize) }

// Validate reports a rank outside 0..MaxRank.
func (e NodeJoined) Validate() error { return checkRank("rank", e.Rank) }

// Validate reports a rank outside 0..MaxRank.
func (e NodeLeft) Validate() error { return checkRank("rank", e.Rank) }

// Validate reports a rank outside 0..MaxRank.
func (e NodeFailed) Validate() error { return checkRank("rank", e.Rank) }

// Validate reports a rank outside 0..MaxRank.
func (e BatchCompleted) Validate() error { return checkRank("rank", e.Rank) }

// Validate reports a rank count outside 0..MaxRank.
func (e GradientSync) Validate() error { return checkRank("ranks", e.Ranks) }

// Validate reports a rank outside 0..MaxRank.
func (e CheckpointSaved) Validate() error { return checkRank("rank", e.Rank) }

func checkRank(what string, n int) error {
	if n < 0 || int64(n) > MaxRank {
		return fmt.Errorf("%s %d outside 0..%d", what, n, MaxRank)
	}
	return nil
}

// registerBuiltins registers the built-in events and their upcasters.
func registerBuiltins(r *Registry) {
	for _, err := range []error{
		Register[TrainingStarted](r),
		Register[NodeJoined](r),
		Register[NodeLeft](r),
		Register[NodeFailed](r),
		Register[EpochStarted](r),
		Register[EpochCompleted](r),
		Register(r, Upcast(1, upcastBatchCompletedV1)),
		Register[GradientSync](r),
		Register[WeightUpdateApplied](r),
		Register[CheckpointSaved](r),
		Register[HyperparameterChanged](r),
		Register[TrainingFinished](r),
		Register[TrainingAborted](r),
	} {
		if err != nil {
			panic(err) // a bug in this file, caught by every test
		}
	}
	withFast(r, "BatchCompleted", fastBatchCompleted)
	withFast(r, "GradientSync", fastGradientSync)
	withFast(r, "WeightUpdateApplied", fastWeightUpdateApplied)
}
