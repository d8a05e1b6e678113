package server

import (
	"bytes"
	"errors"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
)

func testLogs(from, to uint64, size int) []*raft.Log {
	var logs []*raft.Log
	for i := from; i <= to; i++ {
		logs = append(logs, &raft.Log{Index: i, Term: 1, Type: raft.LogNoop, Data: bytes.Repeat([]byte{byte(i)}, size)})
	}
	return logs
}

func openTestLogStore(t *testing.T, dir string, cacheBytes int64) *logStore {
	t.Helper()
	s, err := openLogStore(dir, cacheBytes, nil, "t", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func checkEntry(t *testing.T, s *logStore, idx uint64, size int) {
	t.Helper()
	var l raft.Log
	if err := s.GetLog(idx, &l); err != nil {
		t.Fatalf("GetLog(%d): %v", idx, err)
	}
	if l.Index != idx || !bytes.Equal(l.Data, bytes.Repeat([]byte{byte(idx)}, size)) {
		t.Fatalf("GetLog(%d) = index %d, %d bytes of data, want %d bytes of %d", idx, l.Index, len(l.Data), size, byte(idx))
	}
}

// The cache holds the newest entries up to its byte bound, and every entry
// reads back, cached or not.
func TestLogStoreCacheBoundedInBytes(t *testing.T) {
	const size = 1000
	s := openTestLogStore(t, t.TempDir(), 10*(size+48))
	for i := uint64(1); i <= 100; i += 10 {
		if err := s.StoreLogs(testLogs(i, i+9, size)); err != nil {
			t.Fatal(err)
		}
	}
	u := s.usage()
	if u.Entries != 100 || u.Bytes != 100*(size+48) {
		t.Fatalf("usage %+v, want 100 entries of %d bytes", u, size+48)
	}
	if u.CacheBytes != 10*(size+48) {
		t.Fatalf("cache holds %d bytes, want exactly the bound %d", u.CacheBytes, 10*(size+48))
	}
	if s.mu.cacheFirst != 91 || len(s.mu.cache) != 10 {
		t.Fatalf("cache holds [%d, +%d), want the newest 10 from 91", s.mu.cacheFirst, len(s.mu.cache))
	}
	for i := uint64(1); i <= 100; i++ {
		checkEntry(t, s, i, size)
	}
	// An entry larger than the whole cache is stored but not cached.
	if err := s.StoreLogs(testLogs(101, 101, 20*size)); err != nil {
		t.Fatal(err)
	}
	if u := s.usage(); u.CacheBytes != 0 {
		t.Fatalf("cache holds %d bytes after an entry larger than its bound", u.CacheBytes)
	}
	checkEntry(t, s, 101, 20*size)
}

// DeleteRange keeps the sizes and the cache in step with the log: a prefix
// (compaction after a snapshot), a suffix (a conflicting tail), everything
// (after installing a snapshot).
func TestLogStoreDeleteRangeKeepsAccounting(t *testing.T) {
	const size = 100
	s := openTestLogStore(t, t.TempDir(), 1<<20)
	if err := s.StoreLogs(testLogs(1, 50, size)); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteRange(1, 20); err != nil {
		t.Fatal(err)
	}

	if u := s.usage(); u.Entries != 30 || u.Bytes != 30*(size+48) || u.CacheBytes != 30*(size+48) {
		t.Fatalf("after prefix delete: %+v", u)
	}
	if err := s.DeleteRange(41, 50); err != nil {
		t.Fatal(err)
	}
	if u := s.usage(); u.Entries != 20 || u.Bytes != 20*(size+48) || u.CacheBytes != 20*(size+48) {
		t.Fatalf("after suffix delete: %+v", u)
	}
	var l raft.Log
	if err := s.GetLog(45, &l); err != raft.ErrLogNotFound {
		t.Fatalf("GetLog of a deleted entry: %v, want ErrLogNotFound", err)
	}
	// The tail is rewritten (a new leader's entries) and reads back new.
	if err := s.StoreLogs(testLogs(41, 45, 2*size)); err != nil {
		t.Fatal(err)
	}
	checkEntry(t, s, 45, 2*size)
	if err := s.DeleteRange(21, 45); err != nil {
		t.Fatal(err)
	}
	if u := s.usage(); u.Entries != 0 || u.Bytes != 0 || u.CacheBytes != 0 {
		t.Fatalf("after deleting everything: %+v", u)
	}
	// After a snapshot install the log restarts above a gap.
	if err := s.StoreLogs(testLogs(1000, 1004, size)); err != nil {
		t.Fatal(err)
	}
	if u := s.usage(); u.Entries != 5 {
		t.Fatalf("after restart above a gap: %+v", u)
	}
	checkEntry(t, s, 1002, size)
}

// A reopened store knows every entry's size again and caches the newest.
func TestLogStoreReopenRebuildsSizes(t *testing.T) {
	dir := t.TempDir()
	s, err := openLogStore(dir, 1<<20, nil, "t", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.StoreLogs(testLogs(5, 40, 300)); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteRange(5, 9); err != nil {
		t.Fatal(err)
	}
	want := s.usage()
	s.Close()
	s2 := openTestLogStore(t, dir, 1<<20)
	if got := s2.usage(); got != want {
		t.Fatalf("after reopen %+v, want %+v", got, want)
	}
	if first, _ := s2.FirstIndex(); first != 10 {
		t.Fatalf("first index %d after reopen, want 10", first)
	}
	for i := uint64(10); i <= 40; i++ {
		checkEntry(t, s2, i, 300)
	}
}

func TestLogStoreTrailingFor(t *testing.T) {
	s := openTestLogStore(t, t.TempDir(), 1<<20)
	// 10 entries of 952+48 = 1000 bytes, then 5 of 9952+48 = 10000.
	if err := s.StoreLogs(testLogs(1, 10, 952)); err != nil {
		t.Fatal(err)
	}
	if err := s.StoreLogs(testLogs(11, 15, 9952)); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		bytes int64
		want  uint64
	}{{1, 1}, {10_000, 1}, {50_000, 5}, {53_000, 8}, {59_999, 14}, {60_000, math.MaxUint64}, {1 << 30, math.MaxUint64}} {
		if got := s.trailingFor(c.bytes); got != c.want {
			t.Errorf("trailingFor(%d) = %d, want %d", c.bytes, got, c.want)
		}
	}
}

func TestLogStoreMonotonic(t *testing.T) {
	s := openTestLogStore(t, t.TempDir(), 1<<20)
	var _ raft.MonotonicLogStore = s
	if !s.IsMonotonic() {
		t.Fatal("raft-wal refuses gaps; raft must be told so")
	}
	if err := s.StoreLogs(testLogs(1, 3, 10)); err != nil {
		t.Fatal(err)
	}
	if err := s.StoreLogs(testLogs(5, 5, 10)); err == nil {
		t.Fatal("a gap was accepted")
	}
	if u := s.usage(); u.Entries != 3 {
		t.Fatalf("a refused append was counted: %+v", u)
	}
}

func fileBytes(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// writeBoltLog makes a raft.db as tsstore wrote it before raft-wal: the log
// (entries [first, last] of size bytes) and the stable keys.
func writeBoltLog(t *testing.T, raftDir string, first, last uint64, size int) {
	t.Helper()
	if err := os.MkdirAll(raftDir, 0o750); err != nil {
		t.Fatal(err)
	}
	db, err := openBolt(filepath.Join(raftDir, raftDBName))
	if err != nil {
		t.Fatal(err)
	}
	for i := first; i <= last; i += 100 {
		if err := db.StoreLogs(testLogs(i, min(i+99, last), size)); err != nil {
			t.Fatal(err)
		}
	}
	for k, v := range map[string]uint64{"CurrentTerm": 7, "LastVoteTerm": 6} {
		if err := db.SetUint64([]byte(k), v); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Set([]byte("LastVoteCand"), []byte("n2")); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

func checkMigrated(t *testing.T, raftDir string, first, last uint64, size int) {
	t.Helper()
	stable, logs, err := openRaftStores(raftDir, 1<<20, nil, "t", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer stable.Close()
	defer logs.Close()
	if f, _ := logs.FirstIndex(); f != first {
		t.Fatalf("wal first index %d, want %d", f, first)
	}
	if l, _ := logs.LastIndex(); l != last {
		t.Fatalf("wal last index %d, want %d", l, last)
	}
	for i := first; i <= last; i++ {
		checkEntry(t, logs, i, size)
	}
	if l, _ := stable.LastIndex(); l != 0 {
		t.Fatalf("raft.db still holds entries up to %d", l)
	}
	term, err := stable.GetUint64([]byte("CurrentTerm"))
	vt, _ := stable.GetUint64([]byte("LastVoteTerm"))
	cand, _ := stable.Get([]byte("LastVoteCand"))
	if err != nil || term != 7 || vt != 6 || string(cand) != "n2" {
		t.Fatalf("stable keys after migration: term %d (%v), vote term %d, candidate %q", term, err, vt, cand)
	}
	for _, leftover := range []string{walTmpName, raftDBNewName} {
		if _, err := os.Stat(filepath.Join(raftDir, leftover)); !os.IsNotExist(err) {
			t.Fatalf("%s left behind: %v", leftover, err)
		}
	}
}

// A data directory whose raft.db holds the log (tsstore before raft-wal)
// is moved to raft-wal on open: every entry, the term and the vote; the
// new raft.db is small again.
func TestOpenRaftStoresMigratesBoltLog(t *testing.T) {
	raftDir := filepath.Join(t.TempDir(), "raft")
	writeBoltLog(t, raftDir, 11, 2000, 4000)
	before := fileBytes(t, filepath.Join(raftDir, raftDBName))
	checkMigrated(t, raftDir, 11, 2000, 4000)
	if after := fileBytes(t, filepath.Join(raftDir, raftDBName)); after >= before/10 {
		t.Fatalf("raft.db is %d bytes after the move, %d before: the log's pages were kept", after, before)
	}
	// A second open finds nothing to move and the same log.
	checkMigrated(t, raftDir, 11, 2000, 4000)
}

// A crash during the move is finished at the next open: a half-copied
// wal.tmp is thrown away and copied again; a complete wal beside a raft.db
// that still holds the log only rewrites raft.db.
func TestOpenRaftStoresMigrationCrashes(t *testing.T) {
	t.Run("during the copy", func(t *testing.T) {
		raftDir := filepath.Join(t.TempDir(), "raft")
		writeBoltLog(t, raftDir, 1, 500, 100)
		tmp := filepath.Join(raftDir, walTmpName)
		if err := os.MkdirAll(tmp, 0o750); err != nil {
			t.Fatal(err)
		}
		half, err := openLogStore(tmp, 0, nil, "t", slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		if err := half.StoreLogs(testLogs(1, 200, 100)); err != nil {
			t.Fatal(err)
		}
		half.Close()
		checkMigrated(t, raftDir, 1, 500, 100)
	})
	t.Run("before raft.db is replaced", func(t *testing.T) {
		raftDir := filepath.Join(t.TempDir(), "raft")
		writeBoltLog(t, raftDir, 1, 500, 100)
		old, err := openBolt(filepath.Join(raftDir, raftDBName))
		if err != nil {
			t.Fatal(err)
		}
		if err := copyBoltLog(raftDir, old, "t", slog.New(slog.DiscardHandler)); err != nil {
			t.Fatal(err)
		}
		old.Close()
		if err := os.WriteFile(filepath.Join(raftDir, raftDBNewName), []byte("torn"), 0o600); err != nil {
			t.Fatal(err)
		}
		checkMigrated(t, raftDir, 1, 500, 100)
	})
}

// VerifyRaftLog finds a flipped byte in any committed write of the Raft
// log, which raft-wal's own reads never check, and tells a torn last write
// (a crash) from damage.
func TestVerifyRaftLogChecksEveryCommit(t *testing.T) {
	write := func(t *testing.T) (string, string) {
		dataDir := t.TempDir()
		s, err := openLogStore(filepath.Join(dataDir, "raft", walDirName), 0, nil, "t", slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		for i := uint64(1); i <= 30; i += 10 {
			if err := s.StoreLogs(testLogs(i, i+9, 1000)); err != nil {
				t.Fatal(err)
			}
		}
		s.Close()
		files, _ := filepath.Glob(filepath.Join(dataDir, "raft", walDirName, "*.wal"))
		if len(files) != 1 {
			t.Fatalf("want one segment file, got %v", files)
		}
		return dataDir, files[0]
	}
	flip := func(t *testing.T, path string, entry byte) {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		// Entries are raft.Log in raft-wal's binary codec; testLogs fills
		// entry i's data with byte i.
		at := bytes.Index(b, bytes.Repeat([]byte{entry}, 1000))
		if at < 0 {
			t.Fatalf("entry %d's data not found", entry)
		}
		b[at+500] ^= 0x10
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("clean", func(t *testing.T) {
		dataDir, _ := write(t)
		c, err := VerifyRaftLog(dataDir)
		if err != nil || c.Entries != 30 || c.FirstIndex != 1 || c.LastIndex != 30 || c.TornTail || c.Files != 1 {
			t.Fatalf("clean log: %+v, %v", c, err)
		}
	})
	t.Run("damaged", func(t *testing.T) {
		dataDir, file := write(t)
		flip(t, file, 15)
		if _, err := VerifyRaftLog(dataDir); !errors.Is(err, ErrRaftLogDamaged) || !strings.Contains(err.Error(), file) {
			t.Fatalf("a flipped byte in the second of three commits: %v", err)
		}
	})
	t.Run("torn tail", func(t *testing.T) {
		dataDir, file := write(t)
		flip(t, file, 25)
		c, err := VerifyRaftLog(dataDir)
		if err != nil || !c.TornTail {
			t.Fatalf("a flipped byte in the last commit of the newest file is a torn write: %+v, %v", c, err)
		}
	})
}

// Compacted entries are gone, even those still in raft-wal's tail segment
// (which raft-wal itself would return): raft must send a far-behind
// follower the snapshot.
func TestLogStoreCompactedEntriesAreGone(t *testing.T) {
	s := openTestLogStore(t, t.TempDir(), 0)
	if err := s.StoreLogs(testLogs(1, 50, 100)); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteRange(1, 20); err != nil {
		t.Fatal(err)
	}
	var l raft.Log
	if err := s.GetLog(20, &l); err != raft.ErrLogNotFound {
		t.Fatalf("GetLog of a compacted entry: %v, want ErrLogNotFound", err)
	}
	checkEntry(t, s, 21, 100)
}

// A node does not start on a Raft log with a damaged commit before its
// last one: raft-wal would read a different log. A torn last write is
// fine (raft-wal drops it).
func TestOpenRefusesDamagedRaftLog(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "wal")
	s := openTestLogStore(t, dir, 0)
	for i := uint64(1); i <= 30; i += 10 {
		if err := s.StoreLogs(testLogs(i, i+9, 1000)); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	files, _ := filepath.Glob(filepath.Join(dir, "*.wal"))
	b, _ := os.ReadFile(files[0])
	at := bytes.Index(b, bytes.Repeat([]byte{15}, 1000))
	b[at+1] ^= 0x01
	os.WriteFile(files[0], b, 0o644)
	if _, err := openLogStore(dir, 0, nil, "t", slog.New(slog.DiscardHandler)); !errors.Is(err, ErrRaftLogDamaged) {
		t.Fatalf("open of a damaged raft log: %v, want ErrRaftLogDamaged", err)
	}
}
