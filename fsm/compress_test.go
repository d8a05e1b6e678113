package fsm

import (
	"bytes"
	"fmt"
	"reflect"
	"testing"

	"github.com/tsstore/tsstore/record"
	"github.com/tsstore/tsstore/segment"
)

// Entries that ask for compression are written compressed on every
// replica, byte for byte alike, next to uncompressed ones; the state, a
// restart's roll-forward and a snapshot restore read them as any other.
func TestCompressedEntries(t *testing.T) {
	dirA := t.TempDir()
	a, b := openProc(t, dirA), openProc(t, t.TempDir())
	var entries [][]byte
	for i := range 120 {
		o := op("p", uint64(i*4+1), fmt.Sprint("run/", i%3), 4)
		for j := range o.Events {
			o.Events[j].Payload = fmt.Appendf(nil, `{"step":%d,"loss":%.3f,"tokens":524288}`, i*4+j, 3-float64(i)/100)
		}
		cmd := &AppendCommand{Timestamp: int64(i), Ops: []AppendOp{o}}
		if i%4 != 3 { // every fourth entry uncompressed
			cmd.Compression = record.CompressionZstd
		}
		data, err := Encode(CmdAppend, cmd)
		if err != nil {
			t.Fatal(err)
		}
		entries = append(entries, data)
	}
	for i, e := range entries {
		mustApply(t, a, uint64(i+1), e)
		mustApply(t, b, uint64(i+1), e)
	}
	logA := logBytes(t, a)
	if !bytes.Equal(logA, logBytes(t, b)) {
		t.Fatal("replicas wrote different bytes")
	}
	compressed, plain, events := 0, 0, 0
	for rest := logA; len(rest) > 0; {
		bt, r, err := record.Next(rest)
		if err != nil {
			t.Fatal(err)
		}
		rest = r
		if bt.Header().Compression() == record.CompressionZstd {
			compressed++
		} else {
			plain++
		}
		it := bt.Records()
		var rec record.Record
		for it.Next(&rec) {
			if want := fmt.Sprintf(`{"step":%d,`, rec.Offset); !bytes.HasPrefix(rec.Payload, []byte(want)) {
				t.Fatalf("offset %d holds %q", rec.Offset, rec.Payload)
			}
			events++
		}
		if it.Err() != nil {
			t.Fatal(it.Err())
		}
	}
	if compressed != 90 || plain != 30 || events != 480 {
		t.Fatalf("%d compressed and %d plain batches, %d events", compressed, plain, events)
	}
	if st, _ := a.StreamInfo("run/1"); st.Version != 160 {
		t.Fatalf("run/1 at version %d, want 160", st.Version)
	}
	// Stream reads find compressed batches through the stream index.
	err := a.WithLog(func(l *segment.Log) error {
		out, _, err := l.StreamBatches(nil, "run/2", 0, 1<<20)
		if err == nil && len(out) == 0 {
			err = fmt.Errorf("no batch of run/2")
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	// A restart rolls the state forward over compressed batches.
	state := a.mu.state.clone()
	a.Close()
	a2 := openProc(t, dirA)
	if !reflect.DeepEqual(a2.mu.state, state) {
		t.Fatal("state after restart differs")
	}
	snap, err := b.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var stream bytes.Buffer
	if err := snap.Persist(&stream); err != nil {
		t.Fatal(err)
	}
	c := openProc(t, t.TempDir())
	if err := c.Restore(&stream); err != nil || !bytes.Equal(logBytes(t, c), logA) {
		t.Fatalf("restore of compressed segments: %v", err)
	}
}
