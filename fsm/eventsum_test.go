package fsm

import (
	"errors"
	"testing"
)

// An op whose events do not match its end-to-end checksum stops the
// processor with ErrChecksumMismatch before anything of the entry is
// written; a matching one applies, and so does an op without a sum (the
// first version's entries).
func TestEventSumIsCheckedBeforeWriting(t *testing.T) {
	p := openProc(t, t.TempDir())
	good := op("p", 1, "s", 3)
	good.EventSum, good.HasEventSum = SumEvents(good.Events), true
	mustApply(t, p, 1, appendEntry(t, 1, good, op("q", 1, "s", 1)))
	before := logBytes(t, p)

	bad := op("p", 4, "s", 2)
	bad.EventSum, bad.HasEventSum = SumEvents(bad.Events), true
	bad.Events[1].Payload[0] ^= 0x01 // damaged after the sum was taken
	other := op("q", 2, "s", 1)
	r := p.Apply(2, appendEntry(t, 2, other, bad))
	if !errors.Is(r.Err, ErrChecksumMismatch) || !errors.Is(r.Err, ErrStorageFailed) {
		t.Fatalf("damaged op: %v, want ErrChecksumMismatch (and the processor stopped)", r.Err)
	}
	if string(logBytes(t, p)) != string(before) {
		t.Fatal("part of the damaged entry was written")
	}
	if !errors.Is(p.Failed(), ErrChecksumMismatch) {
		t.Fatalf("processor not stopped: %v", p.Failed())
	}
	data := appendEntry(t, 2, other, bad)
	if err := CheckCommand(data); !errors.Is(err, ErrChecksumMismatch) {
		t.Fatalf("CheckCommand (tsstore verify) of the damaged entry: %v", err)
	}
}
