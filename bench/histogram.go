package bench

import (
	"math"
	"math/bits"
	"time"
)

// Histogram records durations in log-linear buckets: exact below 256 ns,
// then 128 buckets per power of two (relative error below 0.8%). The zero
// value is ready to use; it is not safe for concurrent use (give each
// worker its own and Merge them).
type Histogram struct {
	counts   [histBuckets]uint64
	n        uint64
	sum      time.Duration
	min, max time.Duration
}

const (
	histSubBits = 7
	histLinear  = 2 << histSubBits // values below this have their own bucket
	histBuckets = histLinear + (64-histSubBits-1)*(1<<histSubBits)
)

func histBucket(v int64) int {
	if v < histLinear {
		return int(max(v, 0))
	}
	shift := bits.Len64(uint64(v)) - histSubBits - 1
	m := v >> shift // in [128, 256)
	return histLinear + (shift-1)<<histSubBits + int(m-(1<<histSubBits))
}

// histValue is the middle of bucket i.
func histValue(i int) int64 {
	if i < histLinear {
		return int64(i)
	}
	i -= histLinear
	shift := i>>histSubBits + 1
	m := int64(i&(1<<histSubBits-1)) + 1<<histSubBits
	lo := m << shift
	return lo + (int64(1)<<shift)/2
}

// Record adds one observation.
func (h *Histogram) Record(d time.Duration) {
	if h.n == 0 || d < h.min {
		h.min = d
	}
	if d > h.max {
		h.max = d
	}
	h.n++
	h.sum += d
	h.counts[histBucket(int64(d))]++
}

// Merge adds o's observations to h.
func (h *Histogram) Merge(o *Histogram) {
	if o.n == 0 {
		return
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	h.max = max(h.max, o.max)
	h.n += o.n
	h.sum += o.sum
	for i, c := range o.counts {
		h.counts[i] += c
	}
}

// Count is the number of observations.
func (h *Histogram) Count() uint64 { return h.n }

// Mean is the average observation (0 when empty).
func (h *Histogram) Mean() time.Duration {
	if h.n == 0 {
		return 0
	}
	return h.sum / time.Duration(h.n)
}

// Max is the largest observation.
func (h *Histogram) Max() time.Duration { return h.max }

// Quantile returns the smallest recorded value v (to bucket precision)
// such that a fraction q of the observations are <= v. 0 when empty.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	rank = min(max(rank, 1), h.n)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			v := time.Duration(histValue(i))
			return min(max(v, h.min), h.max)
		}
	}
	return h.max
}

// CDF returns (value, fraction <= value) points, one per non-empty
// bucket, for plotting.
func (h *Histogram) CDF() (values []time.Duration, fractions []float64) {
	var seen uint64
	for i, c := range h.counts {
		if c == 0 {
			continue
		}
		seen += c
		values = append(values, min(max(time.Duration(histValue(i)), h.min), h.max))
		fractions = append(fractions, float64(seen)/float64(h.n))
	}
	return values, fractions
}
