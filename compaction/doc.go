// Package compaction decides what retention removes. It owns the plan,
// not the bytes: given the retention policies (by stream prefix), the
// sealed segments still kept (oldest first, with the streams each holds)
// and the time, Plan returns the cut below which whole sealed segments
// may go. The leader runs it and commits the cut through Raft (package
// fsm, CmdCompact); every replica then drops the same files (package
// segment, DropSealedBefore). It imports neither of them: the server
// translates.
//
// # Invariants
//
//   - The cut is the end of a sealed segment, and every segment below it
//     may go: the log only loses a prefix, made of whole segments.
//   - A segment may go only if every stream in it is governed by a policy
//     (the longest matching prefix) that lets it go: by age, its last
//     batch is older than MaxAge; by size, the segments after it that hold
//     streams of that policy add up to MaxBytes or more. A stream no
//     policy covers keeps its segment, and every segment after it.
//   - Plan is a pure function of its inputs; the time is an input.
package compaction
