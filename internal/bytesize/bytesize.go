// Package bytesize parses sizes written for people: 2TB, 500GiB, 1048576.
package bytesize

import (
	"fmt"
	"strconv"
	"strings"
)

// Parse parses a positive size with an optional SI (KB, MB, GB, TB) or IEC
// (KiB, MiB, GiB, TiB) unit, or B.
func Parse(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   float64
	}{
		{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
		{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"B", 1},
	}
	v, mult := strings.TrimSpace(s), 1.0
	for _, u := range units {
		if w, ok := strings.CutSuffix(v, u.suffix); ok {
			v, mult = strings.TrimSpace(w), u.mult
			break
		}
	}
	n, err := strconv.ParseFloat(v, 64)
	if err != nil || n <= 0 || n*mult >= 1<<63 {
		return 0, fmt.Errorf("%q: want a positive size such as 2TB, 500GiB or 1048576", s)
	}
	return int64(n * mult), nil
}
