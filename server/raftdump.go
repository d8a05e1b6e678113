package server

import (
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"

	"github.com/hashicorp/raft"
	wal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/fs"
	walsegment "github.com/hashicorp/raft-wal/segment"
	"github.com/hashicorp/raft-wal/types"

	"github.com/tsstore/tsstore/fsm"
)

// RaftEntryDump is one Raft log entry as `tsstore dump` shows it.
type RaftEntryDump struct {
	Index   uint64 `json:"index"`
	Term    uint64 `json:"term"`
	Type    string `json:"type"`
	Bytes   int    `json:"bytes"`
	Command string `json:"command,omitempty"`
	Error   string `json:"error,omitempty"`
}

// RaftFileDump is one raft-wal segment file as `tsstore dump` shows it.
type RaftFileDump struct {
	File      string          `json:"file"`
	BaseIndex uint64          `json:"base_index"`
	ID        uint64          `json:"segment_id"`
	Entries   []RaftEntryDump `json:"entries"`
	// Commits is "ok", "torn tail" or the damage VerifyRaftLog reports.
	Commits string `json:"commits"`
}

// DumpRaftLogFile reads one raft-wal segment file (<base>-<id>.wal) of a
// stopped or running node without changing it: each entry's index, term,
// type and size, what its command holds (ops, events, whether the event
// checksums match) and whether every commit's CRC holds.
func DumpRaftLogFile(path string) (RaftFileDump, error) {
	d := RaftFileDump{File: path}
	if _, err := fmt.Sscanf(filepath.Base(path), "%020d-%016x.wal", &d.BaseIndex, &d.ID); err != nil {
		return d, fmt.Errorf("%s: not a raft-wal segment file name (<base index>-<id>.wal): %w", path, err)
	}
	d.Commits = "ok"
	if torn, err := checkWALFile(path, true); err != nil {
		d.Commits = err.Error()
	} else if torn {
		d.Commits = tornTail
	}
	codec := &wal.BinaryCodec{}
	f := walsegment.NewFiler(filepath.Dir(path), fs.New())
	err := f.DumpSegment(d.BaseIndex, d.ID, 0, 0, func(_ types.SegmentInfo, e types.LogEntry) (bool, error) {
		var l raft.Log
		ed := RaftEntryDump{Index: e.Index, Bytes: len(e.Data)}
		if err := codec.Decode(e.Data, &l); err != nil {
			ed.Error = err.Error()
		} else {
			ed.Term, ed.Type = l.Term, l.Type.String()
			if l.Type == raft.LogCommand {
				ed.Command = fsm.DescribeCommand(l.Data)
				if err := fsm.CheckCommand(l.Data); err != nil {
					ed.Error = err.Error()
				}
			}
		}
		d.Entries = append(d.Entries, ed)
		return true, nil
	})
	return d, err
}

// OK reports whether the file showed no damage (a torn tail is not).
func (d RaftFileDump) OK() bool {
	for _, e := range d.Entries {
		if e.Error != "" {
			return false
		}
	}
	return d.Commits == "ok" || d.Commits == tornTail
}

const tornTail = "torn tail (the last write, cut by a crash; a node drops it at start)"

// WriteText prints the dump as a table.
func (d RaftFileDump) WriteText(w io.Writer) {
	fmt.Fprintf(w, "raft log file %s: base index %d, segment id %d\n", d.File, d.BaseIndex, d.ID)
	fmt.Fprintf(w, "%10s %6s %-18s %9s  %s\n", "index", "term", "type", "bytes", "command")
	for _, e := range d.Entries {
		line := e.Command
		if e.Error != "" {
			line += "  BAD: " + e.Error
		}
		fmt.Fprintf(w, "%10d %6d %-18s %9d  %s\n", e.Index, e.Term, e.Type, e.Bytes, line)
	}
	fmt.Fprintf(w, "%d entries; commits: %s\n", len(d.Entries), d.Commits)
}

// WriteJSON prints the dump as one JSON object.
func (d RaftFileDump) WriteJSON(w io.Writer) error { return json.NewEncoder(w).Encode(d) }
