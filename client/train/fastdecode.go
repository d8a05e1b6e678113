package train

import (
	"encoding/binary"
	"math"
)

// Fast paths for the events a run holds most of (every rank, every step):
// BatchCompleted, GradientSync and WeightUpdateApplied. They read the
// body with mp, which accepts only encodings the reflection decoder turns
// into the same values (canonical unsigned and signed integers, float 64,
// str): anything else, including every malformed body, falls back to the
// reflection decoder, so errors and edge cases are its own. A resume
// folds thousands of these per call; reflection cost about half of it.

// mp is a minimal msgpack reader; ok turns false at the first value it
// does not take.
type mp struct {
	b  []byte
	ok bool
}

func (m *mp) take(n int) []byte {
	if !m.ok || n > len(m.b) {
		m.ok = false
		return nil
	}
	v := m.b[:n]
	m.b = m.b[n:]
	return v
}

func (m *mp) byte1() byte {
	if b := m.take(1); b != nil {
		return b[0]
	}
	return 0
}

// array reads a fixarray header of exactly n elements.
func (m *mp) array(n int) {
	if c := m.byte1(); c != 0x90|byte(n) {
		m.ok = false
	}
}

// u64 reads a non-negative integer in an unsigned form.
func (m *mp) u64() uint64 {
	c := m.byte1()
	switch {
	case c <= 0x7f:
		return uint64(c)
	case c == 0xcc:
		return uint64(m.byte1())
	case c == 0xcd:
		if b := m.take(2); b != nil {
			return uint64(binary.BigEndian.Uint16(b))
		}
	case c == 0xce:
		if b := m.take(4); b != nil {
			return uint64(binary.BigEndian.Uint32(b))
		}
	case c == 0xcf:
		if b := m.take(8); b != nil {
			return binary.BigEndian.Uint64(b)
		}
	}
	m.ok = false
	return 0
}

// int reads an integer that fits an int, signed or unsigned form.
func (m *mp) int() int {
	if len(m.b) > 0 {
		switch c := m.b[0]; {
		case c >= 0xe0:
			m.b = m.b[1:]
			return int(int8(c))
		case c == 0xd0:
			if b := m.take(2); b != nil {
				return int(int8(b[1]))
			}
		case c == 0xd1:
			if b := m.take(3); b != nil {
				return int(int16(binary.BigEndian.Uint16(b[1:])))
			}
		case c == 0xd2:
			if b := m.take(5); b != nil {
				return int(int32(binary.BigEndian.Uint32(b[1:])))
			}
		}
	}
	u := m.u64()
	if u > math.MaxInt32 { // leave the range checks (and 32-bit ints) to the slow path
		m.ok = false
	}
	return int(u)
}

// f64 reads a float 64.
func (m *mp) f64() float64 {
	if m.byte1() != 0xcb {
		m.ok = false
		return 0
	}
	if b := m.take(8); b != nil {
		return math.Float64frombits(binary.BigEndian.Uint64(b))
	}
	return 0
}

// str reads a str of any width.
func (m *mp) str() string {
	c := m.byte1()
	var n int
	switch {
	case c >= 0xa0 && c <= 0xbf:
		n = int(c & 0x1f)
	case c == 0xd9:
		n = int(m.byte1())
	case c == 0xda:
		if b := m.take(2); b != nil {
			n = int(binary.BigEndian.Uint16(b))
		}
	default:
		m.ok = false
	}
	return string(m.take(n))
}

func (m *mp) done() bool { return m.ok && len(m.b) == 0 }

func fastBatchCompleted(body []byte) (Event, bool) {
	m := mp{b: body, ok: true}
	m.array(7)
	e := BatchCompleted{Rank: m.int(), Epoch: m.u64(), Batch: m.u64(), Step: m.u64(), Loss: m.f64(), LearningRate: m.f64(), Samples: m.u64()}
	return e, m.done()
}

func fastGradientSync(body []byte) (Event, bool) {
	m := mp{b: body, ok: true}
	m.array(4)
	e := GradientSync{Step: m.u64(), Ranks: m.int(), Bytes: m.u64(), Micros: m.u64()}
	return e, m.done()
}

func fastWeightUpdateApplied(body []byte) (Event, bool) {
	m := mp{b: body, ok: true}
	m.array(2)
	e := WeightUpdateApplied{Step: m.u64(), ParamHash: m.str()}
	return e, m.done()
}

// withFast puts a fast path in front of a registered type's decoder.
func withFast(r *Registry, typ string, fast func([]byte) (Event, bool)) {
	e := r.lookup(typ)
	slow := e.decode
	e.decode = func(body []byte) (Event, error) {
		if ev, ok := fast(body); ok {
			return ev, nil
		}
		return slow(body)
	}
}
