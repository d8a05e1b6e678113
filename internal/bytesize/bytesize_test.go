package bytesize

import "testing"

func TestParse(t *testing.T) {
	for in, want := range map[string]int64{"2TB": 2e12, "500GiB": 500 << 30, "1048576": 1 << 20, "1.5 KiB": 1536, "10B": 10} {
		if got, err := Parse(in); err != nil || got != want {
			t.Errorf("Parse(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "0", "-5GB", "lots", "1e30TB"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
}
