package fsm

import (
	"sort"
	"strings"
)

// StreamEntry is one stream in a listing.
type StreamEntry struct {
	Name string
	StreamState
}

// ListStreams returns up to limit streams whose names start with prefix and
// sort after `after`, in name order, and whether more follow.
func (p *Processor) ListStreams(prefix, after string, limit int) ([]StreamEntry, bool) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	names := p.sortedNamesLocked()
	i := sort.SearchStrings(names, max(after+"\x00", prefix))
	var out []StreamEntry
	for ; i < len(names) && strings.HasPrefix(names[i], prefix); i++ {
		st := p.mu.state.Streams[names[i]]
		if d, ok := p.mu.state.Retention.deleted(names[i]); ok && st.LastOffset <= d.Upto {
			continue // deleted, not written since
		}
		if len(out) == limit {
			return out, true
		}
		out = append(out, StreamEntry{Name: names[i], StreamState: *st})
	}
	return out, false
}

// sortedNamesLocked returns the stream names in order, rebuilding the cached
// slice only when a stream was created since the last call. The caller
// holds p.mu (read or write).
func (p *Processor) sortedNamesLocked() []string {
	p.namesMu.Lock()
	defer p.namesMu.Unlock()
	if len(p.names) != len(p.mu.state.Streams) {
		p.names = p.names[:0]
		for name := range p.mu.state.Streams {
			p.names = append(p.names, name)
		}
		sort.Strings(p.names)
	}
	return p.names
}
