package fsm

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/tsstore/tsstore/segment"

	"github.com/tsstore/tsstore/internal/atomicfile"
)

// SnapshotStore is a raft.SnapshotStore whose snapshots hold segment files
// by hard link. Persisting a snapshot of a 100 GiB log writes a few KiB:
// the header, and one link per segment. Opening a snapshot (to send it to
// a follower) yields the standard stream: the header file followed by each
// linked file's captured prefix.
//
// Layout of one snapshot, dir/<id>/:
//
//	meta.json    raft.SnapshotMeta plus the linked files and their sizes
//	state.bin    bytes written to the sink (the header, or for a snapshot
//	             received from the leader, the whole stream)
//	NNN.seg      hard links to segment files, in stream order
//
// A snapshot is built in dir/<id>.tmp and renamed into place on Close, so
// List never sees a half-written one.
type SnapshotStore struct {
	dir    string
	retain int
	logger *slog.Logger
	mu     sync.Mutex // serialises Create/Close/reap against each other
	// remote reads the objects of tiered parts (UseRemote); nil: a
	// snapshot with one fails to open.
	remote segment.Remote
}

// UseRemote makes Open read the tiered parts of snapshots through r.
// Call it before the store is used.
func (s *SnapshotStore) UseRemote(r segment.Remote) { s.remote = r }

// linkedFile is one segment part of a stored snapshot: a file in the
// snapshot's directory (a hard link to the log's segment), or, for a
// tiered segment, the object Key in the tier target (Name empty), read
// when the snapshot is opened.
type linkedFile struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
	Key  string `json:"key,omitempty"`
}

type storeMeta struct {
	raft.SnapshotMeta
	StateSize int64        `json:"state_size"`
	Links     []linkedFile `json:"links"`
	// Keys are the objects the stream's header references (a version 2
	// stream's tiered segments), read from state.bin at Close.
	Keys []string `json:"keys,omitempty"`
}

// NewSnapshotStore opens a store in dir that keeps the newest retain
// snapshots.
func NewSnapshotStore(dir string, retain int, logger *slog.Logger) (*SnapshotStore, error) {
	if retain < 1 {
		return nil, fmt.Errorf("fsm: snapshot retain must be at least 1")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".tmp") {
			os.RemoveAll(filepath.Join(dir, e.Name()))
		}
	}
	return &SnapshotStore{dir: dir, retain: retain, logger: logger}, nil
}

// Create implements raft.SnapshotStore.
func (s *SnapshotStore) Create(version raft.SnapshotVersion, index, term uint64,
	configuration raft.Configuration, configurationIndex uint64, _ raft.Transport) (raft.SnapshotSink, error) {
	if version != 1 {
		return nil, fmt.Errorf("fsm: unsupported snapshot version %d", version)
	}
	id := fmt.Sprintf("%d-%d-%d", term, index, time.Now().UnixMilli())
	tmp := filepath.Join(s.dir, id+".tmp")
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return nil, err
	}
	f, err := os.Create(filepath.Join(tmp, "state.bin"))
	if err != nil {
		os.RemoveAll(tmp)
		return nil, err
	}
	return &linkSink{
		store: s, tmp: tmp, f: f, w: bufio.NewWriterSize(f, 1<<20),
		meta: storeMeta{SnapshotMeta: raft.SnapshotMeta{
			Version: version, ID: id, Index: index, Term: term,
			Configuration: configuration, ConfigurationIndex: configurationIndex,
		}},
	}, nil
}

// TieredKeys returns the object keys the stored snapshots reference
// (their tiered parts): objects that must stay while those snapshots may
// be sent to a follower or restored.
func (s *SnapshotStore) TieredKeys() (map[string]bool, error) {
	metas, err := s.list()
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, m := range metas {
		for _, l := range m.Links {
			if l.Key != "" {
				out[l.Key] = true
			}
		}
		for _, k := range m.Keys {
			out[k] = true
		}
	}
	return out, nil
}

// List implements raft.SnapshotStore: newest first.
func (s *SnapshotStore) List() ([]*raft.SnapshotMeta, error) {
	metas, err := s.list()
	if err != nil {
		return nil, err
	}
	out := make([]*raft.SnapshotMeta, len(metas))
	for i := range metas {
		m := metas[i].SnapshotMeta
		out[i] = &m
	}
	return out, nil
}

func (s *SnapshotStore) list() ([]storeMeta, error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, err
	}
	var metas []storeMeta
	for _, e := range ents {
		if !e.IsDir() || strings.HasSuffix(e.Name(), ".tmp") {
			continue
		}
		m, err := s.readMeta(e.Name())
		if err != nil {
			s.logger.Warn("skipping unreadable snapshot", "id", e.Name(), "error", err)
			continue
		}
		metas = append(metas, m)
	}
	sort.Slice(metas, func(i, j int) bool {
		a, b := metas[i], metas[j]
		if a.Term != b.Term {
			return a.Term > b.Term
		}
		if a.Index != b.Index {
			return a.Index > b.Index
		}
		return a.ID > b.ID
	})
	return metas, nil
}

func (s *SnapshotStore) readMeta(id string) (storeMeta, error) {
	var m storeMeta
	b, err := os.ReadFile(filepath.Join(s.dir, id, "meta.json"))
	if err != nil {
		return m, err
	}
	err = json.Unmarshal(b, &m)
	return m, err
}

// Open implements raft.SnapshotStore. It opens every file of the
// snapshot before it returns, so the reader stays valid if the snapshot
// is reaped while it is read (a newer snapshot's Close removes all but the
// newest retain): the open descriptors keep the unlinked files, and
// segment files are never written in place. Only the moment between
// readMeta and the opens can lose the race, and then Open fails; callers
// that stream a snapshot (InstallSnapshot, Backup) hold nothing else.
func (s *SnapshotStore) Open(id string) (*raft.SnapshotMeta, io.ReadCloser, error) {
	m, err := s.readMeta(id)
	if err != nil {
		return nil, nil, err
	}
	dir := filepath.Join(s.dir, id)
	parts := []linkedFile{{Name: "state.bin", Size: m.StateSize}}
	parts = append(parts, m.Links...)
	r, err := openConcat(dir, parts, s.remote)
	if err != nil {
		return nil, nil, err
	}
	meta := m.SnapshotMeta
	return &meta, r, nil
}

func (s *SnapshotStore) reap() {
	metas, err := s.list()
	if err != nil {
		return
	}
	for i := s.retain; i < len(metas); i++ {
		if err := os.RemoveAll(filepath.Join(s.dir, metas[i].ID)); err != nil {
			s.logger.Warn("removing old snapshot", "id", metas[i].ID, "error", err)
		}
	}
}

// linkSink writes state.bin and links segment files.
type linkSink struct {
	store  *SnapshotStore
	tmp    string
	f      *os.File
	w      *bufio.Writer
	meta   storeMeta
	linked bool
	done   bool
}

func (k *linkSink) ID() string { return k.meta.ID }

func (k *linkSink) Write(p []byte) (int, error) {
	if k.linked {
		return 0, errors.New("fsm: snapshot write after a linked segment")
	}
	n, err := k.w.Write(p)
	k.meta.StateSize += int64(n)
	return n, err
}

// Link implements Linker: the first size bytes of path become the next
// part of the stream. Falls back to a copy across filesystems.
func (k *linkSink) Link(path string, size int64) error {
	k.linked = true
	name := fmt.Sprintf("%06d.seg", len(k.meta.Links))
	dst := filepath.Join(k.tmp, name)
	if err := os.Link(path, dst); err != nil {
		if err := copyFile(path, dst, size); err != nil {
			return err
		}
	}
	k.meta.Links = append(k.meta.Links, linkedFile{Name: name, Size: size})
	return nil
}

// LinkRemote implements RemoteLinker: the size bytes of the tiered
// object key become the next part of the stream, read from the target
// when the snapshot is opened; nothing is written locally.
func (k *linkSink) LinkRemote(key string, size int64) error {
	k.linked = true
	k.meta.Links = append(k.meta.Links, linkedFile{Size: size, Key: key})
	return nil
}

func (k *linkSink) Close() error {
	if k.done {
		return nil
	}
	k.done = true
	err := k.w.Flush()
	if err == nil {
		err = k.f.Sync()
	}
	if cerr := k.f.Close(); err == nil {
		err = cerr
	}
	k.meta.Size = k.meta.StateSize
	for _, l := range k.meta.Links {
		k.meta.Size += l.Size
	}
	if err == nil {
		k.meta.Keys = headerKeys(filepath.Join(k.tmp, "state.bin"))
	}
	if err == nil {
		var b []byte
		if b, err = json.Marshal(&k.meta); err == nil {
			err = atomicfile.Write(k.tmp, "meta.json", b, 0o644)
		}
	}
	if err == nil {
		err = atomicfile.SyncDir(k.tmp)
	}
	k.store.mu.Lock()
	defer k.store.mu.Unlock()
	if err == nil {
		err = os.Rename(k.tmp, filepath.Join(k.store.dir, k.meta.ID))
	}
	if err == nil {
		err = atomicfile.SyncDir(k.store.dir)
	}
	if err != nil {
		os.RemoveAll(k.tmp)
		return err
	}
	k.store.reap()
	return nil
}

func (k *linkSink) Cancel() error {
	if k.done {
		return nil
	}
	k.done = true
	k.f.Close()
	return os.RemoveAll(k.tmp)
}

// headerKeys returns the object keys the stream header at the start of
// path references; none if it does not parse (Restore refuses such a
// snapshot anyway).
func headerKeys(path string) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	h, err := readSnapshotHeader(bufio.NewReader(f))
	if err != nil {
		return nil
	}
	var keys []string
	for _, t := range tieredSegments(h.Segments) {
		keys = append(keys, t.Key)
	}
	return keys
}

func copyFile(src, dst string, size int64) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, io.NewSectionReader(in, 0, size))
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}

// concatReader streams the prefixes of several files (or tiered
// objects) in order.
type concatReader struct {
	files []io.Closer
	r     io.Reader
}

// openConcat opens the parts: files in dir, or tiered objects read
// through remote. A tiered object's bytes are read as the stream is;
// whoever consumes the stream checks them (every batch CRC).
func openConcat(dir string, parts []linkedFile, remote segment.Remote) (*concatReader, error) {
	c := &concatReader{}
	var readers []io.Reader
	for _, p := range parts {
		var ra io.ReaderAt
		if p.Key != "" {
			if remote == nil {
				c.Close()
				return nil, fmt.Errorf("fsm: snapshot part %q is tiered and the store has no tier target", p.Key)
			}
			obj, err := remote.Open(p.Key, p.Size)
			if err != nil {
				c.Close()
				return nil, err
			}
			c.files, ra = append(c.files, obj), obj
		} else {
			f, err := os.Open(filepath.Join(dir, p.Name))
			if err != nil {
				c.Close()
				return nil, err
			}
			c.files, ra = append(c.files, f), f
		}
		readers = append(readers, io.NewSectionReader(ra, 0, p.Size))
	}
	c.r = io.MultiReader(readers...)
	return c, nil
}

func (c *concatReader) Read(p []byte) (int, error) { return c.r.Read(p) }

func (c *concatReader) Close() error {
	for _, f := range c.files {
		f.Close()
	}
	return nil
}

// SnapshotCheck is the result of checking one snapshot on disk.
type SnapshotCheck struct {
	ID    string `json:"id"`
	Index uint64 `json:"index"`
	Term  uint64 `json:"term"`
	Size  int64  `json:"size_bytes"`
	// NextOffset is the stream header's next offset (valid when Err is "").
	NextOffset uint64 `json:"next_offset"`
	Err        string `json:"error,omitempty"`
}

// CheckSnapshots checks every snapshot in the store directory dir without
// changing anything: meta.json parses, state.bin and every linked file
// hold at least the bytes the stream needs, and the stream's header
// passes its checksum. The segment bytes themselves are the log's (hard
// links), which `tsstore verify` scrubs separately.
func CheckSnapshots(dir string) ([]SnapshotCheck, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	s := &SnapshotStore{dir: dir, logger: slog.New(slog.DiscardHandler)}
	var out []SnapshotCheck
	for _, e := range ents {
		if !e.IsDir() || strings.HasSuffix(e.Name(), ".tmp") {
			continue
		}
		c := SnapshotCheck{ID: e.Name()}
		if err := s.check(e.Name(), &c); err != nil {
			c.Err = err.Error()
		}
		out = append(out, c)
	}
	return out, nil
}

func (s *SnapshotStore) check(id string, c *SnapshotCheck) error {
	m, err := s.readMeta(id)
	if err != nil {
		return fmt.Errorf("meta.json: %w", err)
	}
	c.Index, c.Term, c.Size = m.Index, m.Term, m.Size
	need := map[string]int64{"state.bin": m.StateSize}
	total := m.StateSize
	for _, l := range m.Links {
		total += l.Size
		if l.Key != "" || l.Name == "" {
			continue // a tiered object: verify --tiered checks those
		}
		need[l.Name] = l.Size
	}
	if total != m.Size {
		return fmt.Errorf("meta.json: parts add up to %d bytes, size says %d", total, m.Size)
	}
	for name, size := range need {
		fi, err := os.Stat(filepath.Join(s.dir, id, name))
		if err != nil {
			return err
		}
		if fi.Size() < size {
			return fmt.Errorf("%s: %d bytes, the stream needs %d", filepath.Join(s.dir, id, name), fi.Size(), size)
		}
	}
	_, rc, err := s.Open(id)
	if err != nil {
		return err
	}
	defer rc.Close()
	info, _, err := ReadSnapshotInfo(rc)
	if err != nil {
		return err
	}
	if info.Index > m.Index {
		return fmt.Errorf("stream header at raft index %d, above the snapshot's %d", info.Index, m.Index)
	}
	c.NextOffset = info.NextOffset
	return nil
}
