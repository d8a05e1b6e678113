package server

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"slices"

	"github.com/hashicorp/raft"
	wal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/fs"
	walsegment "github.com/hashicorp/raft-wal/segment"
	"github.com/hashicorp/raft-wal/types"

	"github.com/tsstore/tsstore/fsm"
)

// ErrRaftLogDamaged marks a Raft log that VerifyRaftLog found damaged.
var ErrRaftLogDamaged = errors.New("raft log damaged")

// RaftLogCheck is what VerifyRaftLog found in a data directory's Raft log.
type RaftLogCheck struct {
	Files      int    `json:"files"`
	Entries    uint64 `json:"entries"`
	FirstIndex uint64 `json:"first_index"`
	LastIndex  uint64 `json:"last_index"`
	Bytes      int64  `json:"bytes"`
	// TornTail is set when the newest file ends in a commit whose CRC
	// fails: the write a crash interrupted, which a node drops at start.
	TornTail bool `json:"torn_tail,omitempty"`
}

// raft-wal's segment file format (its README, frozen there): a 32-byte
// file header, then frames of an 8-byte header [type u8][3 reserved]
// [length or CRC u32 LE] and a payload padded to 8 bytes. A commit frame
// carries the CRC-32C of every byte since the previous commit frame (the
// first commit's includes the file header).
const (
	walFileHeaderLen  = 32
	walFrameHeaderLen = 8
	walFrameCommit    = 3
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// VerifyRaftLog checks a stopped node's Raft log (raft/wal) without
// changing it: every commit's CRC in every segment file (raft-wal itself
// checks only the last one, to find a torn tail, and trusts the rest), and
// every entry decodes as a Raft entry at the next index and, if it is a
// command, as an FSM command.
func VerifyRaftLog(dataDir string) (RaftLogCheck, error) {
	var c RaftLogCheck
	dir := filepath.Join(dataDir, "raft", walDirName)
	files, torn, err := checkWALFiles(dir)
	if err != nil || files == 0 {
		return c, err // none: a node that never started
	}
	c.Files, c.TornTail = files, torn
	codec := &wal.BinaryCodec{}
	var l raft.Log
	err = walsegment.NewFiler(dir, fs.New()).DumpLogs(0, 0, func(info types.SegmentInfo, e types.LogEntry) (bool, error) {
		name := filepath.Join(dir, walsegment.FileName(info))
		if c.Entries > 0 && e.Index != c.LastIndex+1 {
			return false, fmt.Errorf("%w: %s: entry %d follows %d (entries missing)", ErrRaftLogDamaged, name, e.Index, c.LastIndex)
		}
		if err := codec.Decode(e.Data, &l); err != nil || l.Index != e.Index {
			return false, fmt.Errorf("%w: %s: entry %d does not decode (%v, index %d)", ErrRaftLogDamaged, name, e.Index, err, l.Index)
		}
		if l.Type == raft.LogCommand {
			if err := fsm.CheckCommand(l.Data); err != nil {
				return false, fmt.Errorf("%w: %s: entry %d: %v", ErrRaftLogDamaged, name, e.Index, err)
			}
		}
		if c.Entries == 0 {
			c.FirstIndex = e.Index
		}
		c.Entries++
		c.LastIndex = e.Index
		c.Bytes += int64(len(e.Data))
		return true, nil
	})
	return c, err
}

// checkWALFiles checks every commit CRC of the raft-wal files in dir at
// open. raft-wal itself checks only the last commit of the newest file (a
// torn write) and trusts the rest; a bit flipped in an earlier commit, in a
// frame's length say, would make it read a different log, losing or
// changing entries this node acknowledged. A damaged log is refused with
// ErrRaftLogDamaged: the node must not start on it (wipe and rejoin).
func checkWALFiles(dir string) (files int, torn bool, err error) {
	names, err := filepath.Glob(filepath.Join(dir, "*.wal"))
	if err != nil {
		return 0, false, err
	}
	slices.Sort(names) // base index, then id: oldest first
	for i, name := range names {
		t, err := checkWALFile(name, i == len(names)-1)
		if err != nil {
			return i, false, err
		}
		torn = torn || t
	}
	return len(names), torn, nil
}

// checkWALFile checks the CRC of every commit in one raft-wal segment
// file. A failing last commit of the newest file is a torn write (torn is
// set); anywhere else it is damage.
func checkWALFile(path string, newest bool) (torn bool, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return false, err
	}
	if len(b) < walFileHeaderLen {
		return false, fmt.Errorf("%w: %s: %d bytes, shorter than the file header", ErrRaftLogDamaged, path, len(b))
	}
	var bad []int64 // positions of commits whose CRC fails
	crcStart, pos := 0, walFileHeaderLen
	for pos+walFrameHeaderLen <= len(b) && b[pos] != 0 {
		v := int(binary.LittleEndian.Uint32(b[pos+4 : pos+8]))
		if b[pos] == walFrameCommit {
			if crc32.Checksum(b[crcStart:pos], castagnoli) != uint32(v) {
				bad = append(bad, int64(pos))
			}
			pos += walFrameHeaderLen
			crcStart = pos
			continue
		}
		pos += walFrameHeaderLen + v + (walFrameHeaderLen-v%walFrameHeaderLen)%walFrameHeaderLen
	}
	switch {
	case len(bad) == 0:
		return false, nil
	case len(bad) == 1 && newest && crcStart == int(bad[0])+walFrameHeaderLen:
		return true, nil
	}
	return false, fmt.Errorf("%w: %s: the commit at position %d fails its CRC (%d commits do)", ErrRaftLogDamaged, path, bad[0], len(bad))
}
