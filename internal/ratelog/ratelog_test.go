package ratelog

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func fakeClock(l *Limiter) *time.Time {
	t := time.Unix(1000, 0)
	l.now = func() time.Time { return t }
	return &t
}

// A flood of one warning: burst lines per window, the next line says how
// many were dropped; another message and info lines are not affected.
func TestHandlerLimitsAFlood(t *testing.T) {
	var buf bytes.Buffer
	l := New(10*time.Second, 3)
	now := fakeClock(l)
	log := slog.New(NewHandler(slog.NewTextHandler(&buf, nil), l)).With("node", "n1")
	for i := range 100 {
		log.Warn("call refused", "remote", i)
		log.Info("normal", "i", i)
	}
	log.Warn("other")
	*now = now.Add(11 * time.Second)
	log.Warn("call refused", "remote", "later")
	out := buf.String()
	if got := strings.Count(out, "call refused"); got != 4 {
		t.Fatalf("%d call refused lines, want 3 + 1 after the window:\n%s", got, out)
	}
	if !strings.Contains(out, "remote=later dropped=97") {
		t.Fatalf("the line after the window does not count the dropped ones:\n%s", out)
	}
	if strings.Count(out, "msg=normal") != 100 || !strings.Contains(out, "msg=other") {
		t.Fatal("info lines or another message were dropped")
	}
}
