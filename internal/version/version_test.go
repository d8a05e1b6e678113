package version

import (
	"runtime"
	"strings"
	"testing"
)

func TestInfo(t *testing.T) {
	i := Info()
	if i.Version == "" || i.GoVersion != runtime.Version() {
		t.Fatalf("Info() = %+v", i)
	}
	s := String()
	if !strings.HasPrefix(s, i.Version+" (") || !strings.Contains(s, runtime.Version()) {
		t.Fatalf("String() = %q", s)
	}
	full := BuildInfo{Version: "v1.2.3", Revision: "0123456789abcdef0123", Modified: true, GoVersion: "go1.26.0"}
	if got, want := full.String(), "v1.2.3 (rev 0123456789ab, modified, go1.26.0)"; got != want {
		t.Fatalf("String() = %q, want %q", got, want)
	}
}
