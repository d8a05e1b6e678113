package segment

import (
	"bytes"
	"fmt"
	"runtime"
	"sync"
	"testing"

	"github.com/tsstore/tsstore/record"
)

// TestConcurrentReaders runs readers against a writer that keeps rolling
// segments. Every read must return whole, verified, contiguous batches
// equal to what was appended. Run it with -race.
func TestConcurrentReaders(t *testing.T) {
	o := testOptions()
	l := mustOpen(t, t.TempDir(), o)
	m := newMaker(64)
	const total = 1500
	appended := make(map[uint64]record.Batch, total)
	var amu sync.Mutex // guards appended, for the readers' cross-check
	batchAt := func(off uint64) record.Batch {
		amu.Lock()
		defer amu.Unlock()
		return appended[off]
	}

	done := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for _, mb := range []int{0, 700, 5000, 1 << 20} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := followLog(l, done, batchAt, mb); err != nil {
				errs <- err
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range 200 {
			select {
			case <-done:
				return
			default:
			}
			l.Segments()
			l.OffsetForTime(m0ts + 500_000)
			l.LastHeader()
		}
	}()

	for i := range total {
		b := m.batch(t, 1+i%4)
		amu.Lock()
		appended[b.Header().BaseOffset] = b
		amu.Unlock()
		if err := l.Append(b); err != nil {
			t.Fatal(err)
		}
		if i%100 == 0 {
			if err := l.Sync(); err != nil {
				t.Fatal(err)
			}
		}
	}
	close(done)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := len(l.Segments()); n < 10 {
		t.Fatalf("only %d segments; the test wants rolls under readers", n)
	}
	if err := l.Verify(nil); err != nil {
		t.Fatal(err)
	}
}

const m0ts = 1_700_000_000_000_000_000

// followLog reads l from offset 0 like a tailing client until done is
// closed and it has caught up, checking every batch against batchAt.
func followLog(l *Log, done <-chan struct{}, batchAt func(uint64) record.Batch, maxBytes int) error {
	var buf []byte
	var from uint64
	for {
		select {
		case <-done:
			if from == l.NextOffset() {
				return nil
			}
		default:
		}
		var err error
		buf, from, err = l.ReadBatches(buf[:0], from, maxBytes)
		if err != nil {
			return err
		}
		if len(buf) == 0 {
			runtime.Gosched() // caught up with the writer
		}
		for rest := buf; len(rest) > 0; {
			b, r, err := record.Next(rest)
			if err != nil {
				return err
			}
			if want := batchAt(b.Header().BaseOffset); !bytes.Equal(b, want) {
				return fmt.Errorf("batch at %d differs from the appended one", b.Header().BaseOffset)
			}
			rest = r
		}
	}
}
