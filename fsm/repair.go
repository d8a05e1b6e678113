package fsm

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tsstore/tsstore/internal/atomicfile"
	"github.com/tsstore/tsstore/segment"
)

// Repair support: sealed segments are byte-identical on every replica, so
// a damaged one is replaced with a peer's copy (segment.ReplaceSealed,
// driven by the server). What the FSM adds: snapshots refuse a log with a
// known damaged segment (Snapshot, ErrSegmentDamaged), a restored log is
// opened strictly (a snapshot with a bad segment is refused, never kept
// as damaged), and the snapshots that hard-link a replaced file are
// pointed at the new one (SnapshotStore.Relink).

// strictSegment is the segment configuration without OpenDamaged, for logs
// that must be whole: one just received in a snapshot.
func (p *Processor) strictSegment() segment.Options {
	o := p.cfg.Segment
	o.OpenDamaged = false
	return o
}

// Damaged lists the log's sealed segments known to be damaged.
func (p *Processor) Damaged() []segment.DamagedSegment {
	var out []segment.DamagedSegment
	_ = p.WithLog(func(l *segment.Log) error {
		out = l.Damaged()
		return nil
	})
	return out
}

// Relink points every link of every snapshot that is the file old (the
// same inode: snapshots hard-link segment files) at newPath instead, which
// holds the same bytes: a replaced segment's snapshots then ship the good
// copy. Each link is replaced atomically (link to a temporary name,
// rename over, fsync the directory). It returns how many links changed.
func (s *SnapshotStore) Relink(old os.FileInfo, newPath string) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range ents {
		if !e.IsDir() || strings.HasSuffix(e.Name(), ".tmp") {
			continue
		}
		m, err := s.readMeta(e.Name())
		if err != nil {
			continue // List skips it too
		}
		dir := filepath.Join(s.dir, e.Name())
		changed := false
		for _, l := range m.Links {
			if l.Key != "" {
				continue // a tiered object: no local file
			}
			path := filepath.Join(dir, l.Name)
			fi, err := os.Stat(path)
			if err != nil || !os.SameFile(fi, old) {
				continue
			}
			tmp := path + ".relink"
			os.Remove(tmp)
			if err := os.Link(newPath, tmp); err != nil {
				return n, fmt.Errorf("fsm: relink %s: %w", path, err)
			}
			if err := os.Rename(tmp, path); err != nil {
				os.Remove(tmp)
				return n, fmt.Errorf("fsm: relink %s: %w", path, err)
			}
			n++
			changed = true
		}
		if changed {
			if err := atomicfile.SyncDir(dir); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

// KnownNodes returns the node table (node id -> API address) as the data
// directory dir last recorded it, in its node file or its checkpoint,
// whichever is newer; empty if neither can be read. A node whose log
// cannot be opened uses it to find peers to repair from before it starts.
func KnownNodes(dir string) map[string]string {
	nodes, nerr := readNodes(dir)
	cp, cerr := readCheckpoint(dir)
	switch {
	case cerr == nil && cp.State != nil && (nerr != nil || cp.Index > nodes.Index):
		return cp.State.Nodes
	case nerr == nil:
		return nodes.Nodes
	}
	return map[string]string{}
}

// RepairFromLog replaces snapshot id, whose own bytes turned out damaged
// (VerifySnapshotStream fails on it) while the log holds good copies, by
// an equivalent snapshot built from the log: the same Raft metadata and
// stream header, with every segment hard-linked from live (the log's
// current segments) at the size the header says. That is possible because
// a snapshot's segment bytes are prefixes of the log's segments (sealed
// ones never change, the active one only grows), byte-identical on every
// replica; it also turns a snapshot received from a leader (one big
// state.bin) into links. The new snapshot is verified end to end before it
// is published under a new id (same term and index, so List puts it
// first); then the damaged one is removed. It returns the new id.
func (s *SnapshotStore) RepairFromLog(id string, live []segment.SegmentInfo) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, err := s.readMeta(id)
	if err != nil {
		return "", err
	}
	f, err := os.Open(filepath.Join(s.dir, id, "state.bin"))
	if err != nil {
		return "", err
	}
	var hdr bytes.Buffer
	h, err := readSnapshotHeader(io.TeeReader(f, &hdr))
	f.Close()
	if err != nil {
		return "", err
	}
	byBase := make(map[uint64]segment.SegmentInfo, len(live))
	for _, si := range live {
		byBase[si.BaseOffset] = si
	}
	newID := fmt.Sprintf("%d-%d-%d", m.Term, m.Index, time.Now().UnixMilli())
	if newID <= id {
		newID = id + "r"
	}
	tmp := filepath.Join(s.dir, newID+".tmp")
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return "", err
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(tmp)
		}
	}()
	if err := atomicfile.Write(tmp, "state.bin", hdr.Bytes(), 0o644); err != nil {
		return "", err
	}
	nm := m
	nm.ID, nm.StateSize, nm.Links, nm.Size = newID, int64(hdr.Len()), nil, int64(hdr.Len())
	for i, ref := range h.Segments {
		si, found := byBase[ref.BaseOffset]
		if ref.Tiered != nil {
			// A version 2 reference: link the tiered segment's local files.
			if !found || !si.Tiered || si.Key != ref.Tiered.Key {
				return "", fmt.Errorf("fsm: snapshot %s references object %q for segment %d, the log does not", id, ref.Tiered.Key, ref.BaseOffset)
			}
			for j, path := range segment.TieredPaths(filepath.Dir(si.Path), ref.BaseOffset) {
				name := fmt.Sprintf("%06d-%d.seg", i, j)
				if err := os.Link(path, filepath.Join(tmp, name)); err != nil {
					return "", err
				}
				nm.Links = append(nm.Links, linkedFile{Name: name, Size: ref.Tiered.Files[j]})
				nm.Size += ref.Tiered.Files[j]
			}
			continue
		}
		if !found || si.Size < ref.Size {
			return "", fmt.Errorf("fsm: snapshot %s needs %d bytes of segment %d, the log has no such segment or fewer bytes", id, ref.Size, ref.BaseOffset)
		}
		nm.Size += ref.Size
		if si.Tiered {
			nm.Links = append(nm.Links, linkedFile{Size: ref.Size, Key: si.Key})
			continue
		}
		name := fmt.Sprintf("%06d.seg", i)
		if err := os.Link(si.Path, filepath.Join(tmp, name)); err != nil {
			return "", err
		}
		nm.Links = append(nm.Links, linkedFile{Name: name, Size: ref.Size})
	}
	rc, err := openConcat(tmp, append([]linkedFile{{Name: "state.bin", Size: nm.StateSize}}, nm.Links...), s.remote)
	if err != nil {
		return "", err
	}
	_, err = io.Copy(io.Discard, VerifySnapshotStream(rc))
	rc.Close()
	if err != nil {
		return "", fmt.Errorf("fsm: the log's copy of snapshot %s does not verify either: %w", id, err)
	}
	b, err := json.Marshal(&nm)
	if err == nil {
		err = atomicfile.Write(tmp, "meta.json", b, 0o644)
	}
	if err == nil {
		err = atomicfile.SyncDir(tmp)
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(s.dir, newID))
	}
	if err == nil {
		err = atomicfile.SyncDir(s.dir)
	}
	if err != nil {
		return "", err
	}
	ok = true
	if err := os.RemoveAll(filepath.Join(s.dir, id)); err != nil {
		s.logger.Warn("removing a repaired snapshot's damaged copy", "id", id, "error", err)
	}
	return newID, nil
}
