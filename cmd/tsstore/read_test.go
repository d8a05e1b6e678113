package main

import (
	"errors"
	"testing"
	"time"
)

// --since takes an RFC 3339 time or a duration ago; a negative duration
// (a time in the future) is a usage error, not an empty read.
func TestParseSince(t *testing.T) {
	before := time.Now()
	got, err := parseSince("15m")
	if err != nil || got.After(before.Add(-15*time.Minute+time.Second)) || got.Before(before.Add(-16*time.Minute)) {
		t.Fatalf("15m: %v, %v", got, err)
	}
	if got, err := parseSince("2026-11-01T10:00:00Z"); err != nil || !got.Equal(time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)) {
		t.Fatalf("RFC 3339: %v, %v", got, err)
	}
	for _, bad := range []string{"-5m", "yesterday", ""} {
		if _, err := parseSince(bad); !errors.Is(err, errUsage) {
			t.Errorf("%q: %v, want a usage error", bad, err)
		}
	}
}
