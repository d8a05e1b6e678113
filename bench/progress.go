package bench

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/term"
)

// Progress shows one updating status line on a terminal. A nil *Progress
// shows nothing, so callers need not check.
type Progress struct {
	w  io.Writer
	mu sync.Mutex
}

// NewProgress returns a Progress writing to w if w is a terminal, and nil
// (quiet) otherwise.
func NewProgress(w io.Writer) *Progress {
	f, ok := w.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return nil
	}
	return &Progress{w: w}
}

// Line replaces the status line with s.
func (p *Progress) Line(format string, args ...any) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, "\r\x1b[K"+format, args...)
}

// Done clears the status line.
func (p *Progress) Done() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprint(p.w, "\r\x1b[K")
}

// Track refreshes a line for a timed phase every 250 ms: elapsed of
// total, count() so far and its rate over the last interval. The returned
// func stops it and clears the line.
func (p *Progress) Track(label string, total time.Duration, count func() int64) (stop func()) {
	if p == nil {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		start, last, lastAt := time.Now(), int64(0), time.Now()
		for {
			select {
			case <-done:
				p.Done()
				return
			case now := <-t.C:
				n := count()
				rate := float64(n-last) / now.Sub(lastAt).Seconds()
				last, lastAt = n, now
				el := now.Sub(start).Truncate(100 * time.Millisecond)
				if total > 0 {
					p.Line("%s  %v / %v  %d events  %.0f events/s", label, el, total, n, rate)
				} else {
					p.Line("%s  %v  %d events  %.0f events/s", label, el, n, rate)
				}
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}
