// Package ratelog keeps a flood of one warning from flooding the logs: a
// client that opens thousands of garbage connections, or a peer that keeps
// failing its TLS handshake, must not write a line per attempt.
//
// A Limiter lets Burst lines of each message through per Window; the rest
// are counted, and the next line of that message let through says how many
// were dropped (dropped=N). Messages are told apart by their text, not
// their attributes, so "call refused" from a thousand remotes is one
// message. Only warnings and errors are limited; nothing else is dropped.
package ratelog

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Limiter counts lines per message per window. Its zero value is not
// usable; call New.
type Limiter struct {
	window time.Duration
	burst  int
	now    func() time.Time

	mu struct {
		sync.Mutex
		msgs map[string]*count
	}
}

type count struct {
	start   time.Time
	n       int // lines let through in the window
	dropped int // lines dropped since the last one let through
}

// maxMessages bounds the table; past it, old windows are forgotten.
const maxMessages = 4096

// New returns a limiter letting burst lines of each message through per
// window.
func New(window time.Duration, burst int) *Limiter {
	l := &Limiter{window: window, burst: burst, now: time.Now}
	l.mu.msgs = map[string]*count{}
	return l
}

// Allow reports whether a line of msg may be written now, and if so how
// many lines of it were dropped before it.
func (l *Limiter) Allow(msg string) (ok bool, dropped int) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.mu.msgs[msg]
	if c == nil {
		if len(l.mu.msgs) >= maxMessages {
			clear(l.mu.msgs)
		}
		c = &count{start: now}
		l.mu.msgs[msg] = c
	}
	if now.Sub(c.start) >= l.window {
		c.start, c.n = now, 0
	}
	if c.n >= l.burst {
		c.dropped++
		return false, 0
	}
	c.n++
	dropped, c.dropped = c.dropped, 0
	return true, dropped
}

// Handler limits the warnings and errors of an slog.Handler.
type Handler struct {
	h slog.Handler
	l *Limiter
}

// NewHandler wraps h with l.
func NewHandler(h slog.Handler, l *Limiter) *Handler { return &Handler{h: h, l: l} }

// Enabled implements slog.Handler.
func (h *Handler) Enabled(ctx context.Context, lv slog.Level) bool { return h.h.Enabled(ctx, lv) }

// Handle implements slog.Handler.
func (h *Handler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level < slog.LevelWarn {
		return h.h.Handle(ctx, r)
	}
	ok, dropped := h.l.Allow(r.Message)
	if !ok {
		return nil
	}
	if dropped > 0 {
		r = r.Clone()
		r.AddAttrs(slog.Int("dropped", dropped))
	}
	return h.h.Handle(ctx, r)
}

// WithAttrs implements slog.Handler; the limiter is shared.
func (h *Handler) WithAttrs(as []slog.Attr) slog.Handler {
	return &Handler{h: h.h.WithAttrs(as), l: h.l}
}

// WithGroup implements slog.Handler; the limiter is shared.
func (h *Handler) WithGroup(name string) slog.Handler {
	return &Handler{h: h.h.WithGroup(name), l: h.l}
}
