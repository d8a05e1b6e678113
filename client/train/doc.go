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
// array [generation, reason], with no schema version:
//
//	0x92 | generation (msgpack unsigned integer, shortest form) | reason (msgpack str)
//
// EncodeFence(2, "node 3 failed") is 92 02 ad 6e6f64652033206661696c6564.
package train
