// Package train is the vocabulary of AI-training events stored in
// tsstore, and the deterministic fold of a run's events into its state.
//
// It is a leaf package: it imports only the standard library and
// github.com/vmihailenco/msgpack/v5, never another tsstore package, so
// that the server (computing run snapshots) and the client SDK (writing
// and reading events) share one definition of the formats and the fold.
//
// # Events
//
// An Event is a Go struct with an EventType (the tsstore event type it is
// stored under; the built-in events use their plain struct name, such as
// "BatchCompleted", so readers can filter by type) and a SchemaVersion
// (the version of its body layout, carried inside the payload). Encode
// turns an event into a type and a payload; Registry.Decode turns them
// back into the current version of the registered struct, upcasting
// older versions. Register adds user types with their upcasters;
// DefaultRegistry holds the built-in types and serves package-level
// Decode.
//
// Decoding is strict, so that a field a newer writer added is never
// silently dropped:
//   - a version newer than the registered one is an *UnknownVersionError
//     (errors.Is ErrUnknownVersion), and so is an older one with no
//     upcaster; an unregistered type is ErrUnknownType;
//   - a body must be an array of exactly the struct's field count (or,
//     for a user type encoded as a map, a map with no unknown key), with
//     no trailing bytes, and must pass the type's Validate method if it
//     has one; anything else is ErrMalformed.
//
// # Payload envelope (frozen)
//
// Every payload is a msgpack array of two elements, the schema version
// and the body, so any msgpack reader sees [version, [fields...]]:
//
//	+------+--------------+---------------------------------------+
//	| 0x92 | version      | body                                  |
//	+------+--------------+---------------------------------------+
//	 1 byte  1 to 3 bytes   one msgpack value, up to the end
//
//	byte 0     0x92, a msgpack fixarray of 2 elements.
//	byte 1..   the version, 1..65535, written as the shortest msgpack
//	           unsigned integer:
//	             0x01..0x7f     versions 1..127 (positive fixint)
//	             0xcc VV        versions 128..255 (uint 8)
//	             0xcd HH LL     versions 256..65535 (uint 16, big-endian)
//	           Readers accept any msgpack integer encoding of 1..65535
//	           (uint 8..64, int 8..64): other writers may widen it.
//	           Version 0 is never valid.
//	body       exactly one msgpack value and nothing after it. For the
//	           built-in types, a msgpack array of the struct's fields in
//	           declaration order (as_array). Encode writes integers in
//	           their shortest form, float64 as float 64 (0xcb) and Params
//	           with sorted keys; readers accept any integer width.
//
// For example BatchCompleted v2 {Rank 7, Epoch 2, Batch 513, Step 70000,
// Loss 2.5, LearningRate 1e-4, Samples 1024} is
//
//	92 02 97 07 02 cd0201 ce00011170 cb4004000000000000 cb3f1a36e2eb1c432d cd0400
//
// The field order of each version of each built-in type is frozen
// (testdata/payloads.golden); a layout change is a new version with an
// upcaster from the old one. History: BatchCompleted v1 was [Rank, Epoch,
// Batch, Step, Loss as float 32, LearningRate]; v2 added Samples and
// widened Loss to float 64; v1 payloads decode as v2 with Samples 0.
//
// # Fence (frozen)
//
// The system event FenceType ("$fence") is written by the server when a
// job attempt starts. Its payload (EncodeFence, DecodeFence) is a msgpack
// array [generation, reason] or [generation, reason, token], with no
// schema version:
//
//	0x92 | generation (msgpack unsigned integer, shortest form) | reason (msgpack str)
//	0x93 | generation | reason | token (msgpack str)
//
// The token is the StartRun call's idempotency key (the server writes the
// 3-element form when the client sent one); the fold ignores it.
// EncodeFence(2, "node 3 failed") is 92 02 ad 6e6f64652033206661696c6564.
//
// # The fold
//
// A State is a run folded from its events in log order by State.Apply, a
// pure function of the inputs: the same inputs give the same State, byte
// for byte (MarshalBinary) and hash, on any machine, whether folded from
// zero or from a snapshot (UnmarshalState) and the inputs after it. The
// server computes run snapshots with it and clients check them with it.
//
//   - Order. Offsets must strictly increase (ErrOutOfOrder, state
//     unchanged): a replay out of order is caught at once. They need not
//     be contiguous; other streams interleave.
//   - Every input applied is chained into Hash and counted in Events,
//     whatever its type. Types other than the built-in ones and the fence
//     (user and system types) change nothing else.
//   - Built-in types are decoded with the built-in registry alone, so no
//     registration changes a fold. A newer schema version
//     (*UnknownVersionError) or a payload that does not decode
//     (ErrMalformed) is refused with the state unchanged; the caller
//     stops, or passes the input to Skip, which chains and counts it (and
//     counts it in Skipped) without interpreting it.
//   - Attempts. A fence whose generation is above Generation starts a new
//     job attempt: Generation is set, Status becomes running, and the
//     attempt's fields (Epoch, Batch, Step, LossStep, Loss, LearningRate,
//     Ranks, Pending) are reset. The run's fields (Events, Batches,
//     MaxStep, the TrainingStarted configuration, LastCheckpoint,
//     FirstNaN) are kept. Any other fence is only chained and counted.
//   - Progress. Step is the highest step (see StepOf) of the attempt,
//     MaxStep that of the run. Loss, LearningRate, Batch and Epoch come
//     from the last BatchCompleted whose step is not below LossStep, so a
//     straggling rank's older step does not move them; EpochStarted and
//     EpochCompleted also set Epoch. FirstNaN is the first BatchCompleted
//     of the run whose loss is NaN or ±Inf. Every NaN kept is the one
//     math.NaN returns, so NaN payload bits never reach a snapshot.
//   - Ranks. NodeJoined makes a rank live; NodeLeft and NodeFailed mark
//     it left or failed; a BatchCompleted or CheckpointSaved from a rank
//     no event named before adds it as live. WorldSize is informational.
//   - Checkpoints. A step's checkpoint is pending until every live rank,
//     and at least one, has saved it; this is checked on every save and
//     whenever a rank leaves or fails (a failed rank no longer counts).
//     The highest complete step becomes LastCheckpoint, with the offset
//     that completed it, the majority SHA256 (ties: the smallest) and the
//     ranks that disagree with it, and it and every pending step below it
//     are dropped. A rank's second save of a step replaces its first;
//     saves at or below LastCheckpoint.Step of the same attempt are
//     ignored; at most MaxPending steps stay pending (the highest). The
//     majority rule assumes replicated checkpoints (data parallel); with
//     sharded ones every file differs.
//   - Status: TrainingStarted and a new fence make the run running,
//     TrainingFinished finished, TrainingAborted aborted.
//
// FoldVersion numbers these rules and the snapshot layout; any change to
// either bumps it (testdata/fold.golden catches one made by mistake).
//
// # Hash chain (frozen)
//
// Hash covers the raw inputs, not the fold, so it does not depend on the
// fold's logic, its version or any re-encoding: two folds have the same
// Hash exactly when they applied the same inputs (Chain):
//
//	Hash_0 = 32 zero bytes
//	Hash_n = SHA-256(Hash_n-1 || offset || timestamp || len(type) || type || len(payload) || payload)
//
//	offset       8 bytes, big-endian uint64
//	timestamp    8 bytes, big-endian int64 (unix nanoseconds)
//	len(type)    4 bytes, big-endian uint32, then the type's bytes
//	len(payload) 4 bytes, big-endian uint32, then the payload's raw bytes
//
// # Snapshot (frozen for each FoldVersion)
//
// MarshalBinary writes a msgpack array of three elements, the hash at a
// fixed place so it can be compared without decoding the rest:
//
//	+------+-------------+-----------+--------------+---------------------------+
//	| 0x93 | FoldVersion | 0xc4 0x20 | Hash         | State fields              |
//	+------+-------------+-----------+--------------+---------------------------+
//	 byte 0  byte 1 (0x01) bytes 2-3   bytes 4-35     msgpack array, to the end
//
// The State fields are a msgpack array of State's exported fields but
// Hash, in declaration order; nested structs are arrays too, maps have
// sorted keys, slices are sorted (Ranks and Files by rank, Pending by
// step). UnmarshalState refuses another FoldVersion (ErrFoldVersion)
// before reading further, and anything that does not decode strictly or
// breaks those orders (ErrMalformed).//
// # Time travel
//
// To see a run as it was at some point, fold its log from the start (or
// from a snapshot taken before that point) and stop before the first
// input Target.Beyond reports: AtOffset and AtTime stop at the first
// input past an offset or a timestamp, AtStep at the first input whose
// own step (StepOf) is past a step, so events without a step that come
// before it are included. The fold is always a prefix of the log, so the
// state and its Hash are those the run had at that point.
// State.StepsBeforeFirstNaN gives the target "n steps before the loss
// first turned NaN".
package train
