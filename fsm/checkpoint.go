package fsm

import (
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/tsstore/tsstore/internal/atomicfile"
	"github.com/tsstore/tsstore/record"
	"github.com/vmihailenco/msgpack/v5"
)

// On-disk files of the FSM besides the segment log. Both are msgpack
// bodies followed by a 4-byte big-endian CRC-32C of the body, written
// atomically (tmp, fsync, rename, fsync dir).
const (
	checkpointName = "checkpoint"
	nodesName      = "nodes"
)

// checkpoint is the state as of Raft index Index, written when a snapshot
// is persisted. The log is durable up to State.NextOffset at that point.
type checkpoint struct {
	_msgpack struct{} `msgpack:",as_array"`
	Version  int
	Index    uint64
	State    *State
}

// nodesFile is a msgpack array (Index, Nodes[, Members]); Members is left
// out when empty, which is the frozen format of the first version.
type nodesFile struct {
	Index   uint64
	Nodes   map[string]string
	Members Membership
}

func readCheckpoint(dir string) (checkpoint, error) {
	var cp checkpoint
	err := readFile(filepath.Join(dir, checkpointName), &cp)
	if err == nil && cp.State != nil {
		cp.State.fillMaps()
	}
	return cp, err
}

func readNodes(dir string) (nodesFile, error) {
	var n nodesFile
	err := readFile(filepath.Join(dir, nodesName), &n)
	if n.Nodes == nil {
		n.Nodes = map[string]string{}
	}
	return n, err
}

func writeCheckpoint(dir string, cp checkpoint) error {
	cp.Version = 1
	return writeFile(dir, checkpointName, cp)
}

// writeCheckpoint writes cp unless a newer one was written (force: a
// restore, which replaces the state whatever its index). A cut writes one
// from Apply while a snapshot taken before it may still be persisting:
// the snapshot's older checkpoint would describe log the cut removed.
func (p *Processor) writeCheckpoint(cp checkpoint, force bool) error {
	p.cpMu.Lock()
	defer p.cpMu.Unlock()
	if !force && cp.Index < p.cpIndex {
		return nil
	}
	if err := writeCheckpoint(p.cfg.Dir, cp); err != nil {
		return err
	}
	p.cpIndex = cp.Index
	if cp.State != nil {
		p.cpNext.Store(cp.State.NextOffset)
	}
	return nil
}

func writeNodes(dir string, n nodesFile) error { return writeFile(dir, nodesName, n) }

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func readFile(path string, v any) error {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if len(b) < 4 {
		return fmt.Errorf("%w: %s: %d bytes is too short", record.ErrCorrupt, path, len(b))
	}
	body, sum := b[:len(b)-4], b[len(b)-4:]
	if crc32.Checksum(body, castagnoli) != uint32(sum[0])<<24|uint32(sum[1])<<16|uint32(sum[2])<<8|uint32(sum[3]) {
		return fmt.Errorf("%w: %s: checksum mismatch", record.ErrCorrupt, path)
	}
	if err := msgpack.Unmarshal(body, v); err != nil {
		return fmt.Errorf("%w: %s: %v", record.ErrCorrupt, path, err)
	}
	return nil
}

func writeFile(dir, name string, v any) error {
	body, err := msgpack.Marshal(v)
	if err != nil {
		return err
	}
	c := crc32.Checksum(body, castagnoli)
	body = append(body, byte(c>>24), byte(c>>16), byte(c>>8), byte(c))
	return atomicfile.Write(dir, name, body, 0o644)
}

// versionsAt reads the stream versions of the records in [first, last]
// back from the log, for the answer to a retried append.
func (p *Processor) versionsAt(first, last uint64) map[string]uint64 {
	out := map[string]uint64{}
	errStop := errors.New("stop")
	_ = p.log.Scan(first, func(b record.Batch) error {
		it := b.Records()
		var r record.Record
		for it.Next(&r) {
			if r.Offset > last {
				return errStop
			}
			if r.Offset >= first && r.StreamVersion > 0 {
				out[string(r.Stream)] = r.StreamVersion
			}
		}
		return nil
	})
	return out
}
