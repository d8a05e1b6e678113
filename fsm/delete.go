package fsm

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Deleting a stream (issue #14, `tsstore streams delete`): a committed
// DeleteStreamCommand marks the stream's events up to its last offset
// deleted (Retention.Deleted). Reads of the stream are refused from then
// on (the server answers NOT_FOUND), every other read hides its events
// (server/read.go, hideDeleted), and the leader drops the events from
// the sealed segments with the rewrite of run compaction (ThinCommand
// with no kept type); the events still in the active segment go once it
// is sealed. Producer dedup state and stream versions stay: the stream
// may be written again, its versions continuing.

// CmdDeleteStream marks a stream deleted (DeleteStreamCommand). Frozen.
const CmdDeleteStream CommandType = 7

// DeleteStreamCommand deletes Stream's events written so far. Frozen:
// msgpack array (Stream).
type DeleteStreamCommand struct {
	_msgpack struct{} `msgpack:",as_array"`
	Stream   string
}

// DeletedStream is a stream whose events at or below Upto are deleted.
// Frozen: msgpack array (Stream, Upto, Version).
type DeletedStream struct {
	_msgpack struct{} `msgpack:",as_array"`
	Stream   string
	Upto     uint64 // its last offset when deleted
	Version  uint64 // its version then
}

// ErrStreamNotFound: a delete of a stream that has no events.
var ErrStreamNotFound = errors.New("stream not found")

// ErrSystemStream: a delete of a stream whose name begins with '$'.
var ErrSystemStream = errors.New("system streams cannot be deleted")

func (p *Processor) applyDeleteStream(index uint64, cmd *DeleteStreamCommand) *ApplyResult {
	if strings.HasPrefix(cmd.Stream, "$") {
		return &ApplyResult{Err: fmt.Errorf("%w: %q", ErrSystemStream, cmd.Stream)}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.mu.state.Streams[cmd.Stream]
	if st == nil {
		return &ApplyResult{Err: fmt.Errorf("%w: %q", ErrStreamNotFound, cmd.Stream)}
	}
	r := &p.mu.state.Retention
	d := DeletedStream{Stream: cmd.Stream, Upto: st.LastOffset, Version: st.Version}
	i := slices.IndexFunc(r.Deleted, func(x DeletedStream) bool { return x.Stream == cmd.Stream })
	if i >= 0 {
		r.Deleted[i] = d
	} else {
		r.Deleted = append(r.Deleted, d)
	}
	p.retentionWM = index
	return &ApplyResult{}
}

// StreamDeleted returns the delete marker of stream, if it has one.
func (p *Processor) StreamDeleted(stream string) (DeletedStream, bool) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.mu.state.Retention.deleted(stream)
}

func (r *Retention) deleted(stream string) (DeletedStream, bool) {
	for _, d := range r.Deleted {
		if d.Stream == stream {
			return d, true
		}
	}
	return DeletedStream{}, false
}

// DeletedStreams returns the delete markers.
func (p *Processor) DeletedStreams() []DeletedStream {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return slices.Clone(p.mu.state.Retention.Deleted)
}

// DeletedUpto returns how far committed rewrites deleted stream's events
// (specs without kept types) in the segment at base (0: not at all).
func (r *Retention) DeletedUpto(base uint64, stream string) uint64 {
	var upto uint64
	for _, s := range r.Thins {
		if s.BaseOffset == base && s.Stream == stream && len(s.Keep) == 0 {
			upto = max(upto, s.Upto)
		}
	}
	return upto
}
