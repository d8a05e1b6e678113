// Package hclogslog routes hclog, the logger of hashicorp/raft and
// raft-wal, into a log/slog logger, so that a node writes one log schema
// (slog's time, level, msg and attributes) instead of two.
//
// A line keeps hclog's message and key/value arguments as slog attributes,
// with the logger's name as the "component" attribute. hclog levels map
// to slog levels one to one (Trace is slog.LevelDebug-4). A Remap
// function may lower (or raise) a line's level before it is logged: a
// library's ERROR is not always the application's, e.g. hashicorp/raft
// reports a peer that is down, or its own clean shutdown, as errors.
package hclogslog

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"strings"
	"sync/atomic"

	"github.com/hashicorp/go-hclog"
)

// LevelTrace is the slog level of hclog's Trace.
const LevelTrace = slog.LevelDebug - 4

// Remap returns the level to log a line at, given hclog's level, the
// message and the key/value arguments.
type Remap func(level hclog.Level, msg string, args []any) hclog.Level

// Options configures New.
type Options struct {
	// Name is the logger's name, logged as the "component" attribute.
	Name string
	// Level is the least severe hclog level logged; NoLevel means Info.
	Level hclog.Level
	// Remap, when set, chooses each line's level (see Remap).
	Remap Remap
	// Reserved are attribute keys the slog logger already carries (such
	// as "node"): a line's argument of the same key is logged as
	// <Name>_<key> instead, so a line never holds one key twice.
	Reserved []string
}

// Logger is an hclog.Logger writing to a slog.Logger.
type Logger struct {
	sl      *slog.Logger // with implied args and the component
	name    string
	implied []any
	base    *slog.Logger // without implied args or component
	shared  *shared
}

// shared is what the loggers derived from one New by With and Named share.
type shared struct {
	level    atomic.Int32
	remap    Remap
	prefix   string // for reserved keys: New's name and "_"
	reserved map[string]bool
}

var _ hclog.Logger = (*Logger)(nil)

// New returns an hclog.Logger that writes to l.
func New(l *slog.Logger, o Options) *Logger {
	lv := o.Level
	if lv == hclog.NoLevel {
		lv = hclog.Info
	}
	sh := &shared{remap: o.Remap, prefix: o.Name + "_", reserved: map[string]bool{}}
	for _, k := range o.Reserved {
		sh.reserved[k] = true
	}
	sh.level.Store(int32(lv))
	return newLogger(l, o.Name, nil, sh)
}

func newLogger(base *slog.Logger, name string, implied []any, sh *shared) *Logger {
	sl := base
	if name != "" {
		sl = sl.With("component", name)
	}
	if len(implied) > 0 {
		sl = sl.With(sh.attrs(implied)...)
	}
	return &Logger{sl: sl, name: name, implied: implied, base: base, shared: sh}
}

// Level returns the slog level of an hclog level.
func Level(l hclog.Level) slog.Level {
	switch l {
	case hclog.Trace:
		return LevelTrace
	case hclog.Debug:
		return slog.LevelDebug
	case hclog.Warn:
		return slog.LevelWarn
	case hclog.Error:
		return slog.LevelError
	}
	return slog.LevelInfo
}

// attrs turns hclog's key/value arguments into slog's: hclog.Format values
// are formatted, other fmt.Stringers (hashicorp/raft passes its *Raft) are
// logged as their String, a reserved key is renamed, and a missing last
// value is logged as hclog does.
func (sh *shared) attrs(args []any) []any {
	out := make([]any, 0, len(args)+1)
	for i := 0; i < len(args); i += 2 {
		key := fmt.Sprint(args[i])
		if i+1 == len(args) {
			out = append(out, hclog.MissingKey, args[i])
			break
		}
		if sh.reserved[key] {
			key = sh.prefix + key
		}
		v := args[i+1]
		switch f := v.(type) {
		case hclog.Format:
			if len(f) > 0 {
				if format, ok := f[0].(string); ok {
					v = fmt.Sprintf(format, f[1:]...)
				}
			}
		case error, slog.LogValuer:
		case fmt.Stringer:
			v = f.String()
		}
		out = append(out, key, v)
	}
	return out
}

func (l *Logger) Log(level hclog.Level, msg string, args ...any) {
	if level == hclog.Off || level == hclog.NoLevel {
		return
	}
	if l.shared.remap != nil {
		level = l.shared.remap(level, msg, args)
	}
	if level < hclog.Level(l.shared.level.Load()) {
		return
	}
	l.sl.Log(context.Background(), Level(level), msg, l.shared.attrs(args)...)
}

func (l *Logger) Trace(msg string, args ...any) { l.Log(hclog.Trace, msg, args...) }
func (l *Logger) Debug(msg string, args ...any) { l.Log(hclog.Debug, msg, args...) }
func (l *Logger) Info(msg string, args ...any)  { l.Log(hclog.Info, msg, args...) }
func (l *Logger) Warn(msg string, args ...any)  { l.Log(hclog.Warn, msg, args...) }
func (l *Logger) Error(msg string, args ...any) { l.Log(hclog.Error, msg, args...) }

func (l *Logger) enabled(level hclog.Level) bool {
	return level >= hclog.Level(l.shared.level.Load()) && l.sl.Enabled(context.Background(), Level(level))
}

func (l *Logger) IsTrace() bool { return l.enabled(hclog.Trace) }
func (l *Logger) IsDebug() bool { return l.enabled(hclog.Debug) }
func (l *Logger) IsInfo() bool  { return l.enabled(hclog.Info) }
func (l *Logger) IsWarn() bool  { return l.enabled(hclog.Warn) }
func (l *Logger) IsError() bool { return l.enabled(hclog.Error) }

func (l *Logger) ImpliedArgs() []any { return l.implied }

func (l *Logger) With(args ...any) hclog.Logger {
	implied := append(append([]any(nil), l.implied...), args...)
	return newLogger(l.base, l.name, implied, l.shared)
}

func (l *Logger) Name() string { return l.name }

// Named appends name to the logger's name, with a dot, as hclog does.
func (l *Logger) Named(name string) hclog.Logger {
	if l.name != "" {
		name = l.name + "." + name
	}
	return newLogger(l.base, name, l.implied, l.shared)
}

func (l *Logger) ResetNamed(name string) hclog.Logger {
	return newLogger(l.base, name, l.implied, l.shared)
}

// SetLevel changes the level of this logger and of every logger derived
// from the same New.
func (l *Logger) SetLevel(level hclog.Level) { l.shared.level.Store(int32(level)) }

func (l *Logger) GetLevel() hclog.Level { return hclog.Level(l.shared.level.Load()) }

// StandardLogger returns a *log.Logger whose lines are logged at
// opts.ForceLevel, or at the level their "[ERROR]"-style prefix names when
// opts.InferLevels is set, else at Info.
func (l *Logger) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return log.New(l.StandardWriter(opts), "", 0)
}

func (l *Logger) StandardWriter(opts *hclog.StandardLoggerOptions) io.Writer {
	if opts == nil {
		opts = &hclog.StandardLoggerOptions{}
	}
	return stdWriter{l: l, opts: *opts}
}

type stdWriter struct {
	l    *Logger
	opts hclog.StandardLoggerOptions
}

var prefixes = []struct {
	prefix string
	level  hclog.Level
}{
	{"[TRACE]", hclog.Trace}, {"[DEBUG]", hclog.Debug}, {"[INFO]", hclog.Info},
	{"[WARN]", hclog.Warn}, {"[ERROR]", hclog.Error}, {"[ERR]", hclog.Error},
}

func (w stdWriter) Write(p []byte) (int, error) {
	msg := string(bytes.TrimRight(p, " \t\n"))
	level := hclog.Info
	if w.opts.InferLevels {
		for _, pf := range prefixes {
			if rest, ok := strings.CutPrefix(msg, pf.prefix); ok {
				msg, level = strings.TrimSpace(rest), pf.level
				break
			}
		}
	}
	if w.opts.ForceLevel != hclog.NoLevel {
		level = w.opts.ForceLevel
	}
	w.l.Log(level, msg)
	return len(p), nil
}
