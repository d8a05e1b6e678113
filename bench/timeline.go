package bench

import (
	"sync"
	"sync/atomic"
	"time"
)

// Timeline counts acknowledged events in fixed-width time buckets from a
// start instant. It is safe for concurrent use.
type Timeline struct {
	start time.Time
	width time.Duration

	mu struct {
		sync.Mutex
		buckets []*atomic.Int64 // grown under mu, read without it
	}
	cur atomic.Pointer[[]*atomic.Int64]
}

// NewTimeline returns a timeline starting now with buckets of width.
func NewTimeline(width time.Duration) *Timeline {
	t := &Timeline{start: time.Now(), width: width}
	empty := []*atomic.Int64{}
	t.cur.Store(&empty)
	return t
}

// Start is the instant bucket 0 begins.
func (t *Timeline) Start() time.Time { return t.start }

// Width is the bucket width.
func (t *Timeline) Width() time.Duration { return t.width }

// Add counts n events acknowledged at instant at.
func (t *Timeline) Add(at time.Time, n int) {
	i := int(at.Sub(t.start) / t.width)
	if i < 0 {
		i = 0
	}
	b := *t.cur.Load()
	if i >= len(b) {
		b = t.grow(i)
	}
	b[i].Add(int64(n))
}

func (t *Timeline) grow(i int) []*atomic.Int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	b := t.mu.buckets
	for len(b) <= i {
		b = append(b, new(atomic.Int64))
	}
	t.mu.buckets = b
	t.cur.Store(&b)
	return b
}

// Counts returns the events per bucket so far.
func (t *Timeline) Counts() []int64 {
	b := *t.cur.Load()
	out := make([]int64, len(b))
	for i, c := range b {
		out[i] = c.Load()
	}
	return out
}

// Rates returns events per second per bucket.
func (t *Timeline) Rates() []float64 {
	c := t.Counts()
	out := make([]float64, len(c))
	for i, n := range c {
		out[i] = float64(n) / t.width.Seconds()
	}
	return out
}
