package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/hashicorp/go-hclog"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	wal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/migrate"
	"github.com/hashicorp/raft-wal/types"

	"github.com/tsstore/tsstore/internal/atomicfile"
)

// The Raft directory of a data directory:
//
//	raft/raft.db   raft-boltdb/v2: the stable store (current term, vote)
//	raft/wal/      raft-wal: the Raft log (segment files, wal-meta.db)
//
// Before raft-wal, raft.db held the log too. openRaftStores moves such a
// log into raft/wal once, crash-safely:
//
//  1. copy every entry into raft/wal.tmp (raft-wal, fsynced), rename it to
//     raft/wal, fsync raft/;
//  2. write the stable keys into raft/raft.db.new, rename it over raft.db,
//     fsync raft/.
//
// A crash in 1 leaves wal.tmp, removed and redone at the next start; a
// crash in 2 leaves raft/wal complete beside a raft.db that still holds
// entries, so only 2 is redone. The old raft.db is replaced, not emptied:
// bolt never gives pages back, and a long log left gigabytes behind.
const (
	raftDBName    = "raft.db"
	walDirName    = "wal"
	walTmpName    = "wal.tmp"
	raftDBNewName = "raft.db.new"
)

// stableKeys are hashicorp/raft's stable-store keys (raft.go, unexported
// there): what raft.db keeps once the log has moved out.
var stableKeys = [][]byte{keyCurrentTerm, []byte("LastVoteTerm"), []byte("LastVoteCand")}

func openBolt(path string) (*raftboltdb.BoltStore, error) {
	s, err := raftboltdb.New(raftboltdb.Options{Path: path, BoltOptions: boltOptions()})
	if err != nil {
		return nil, fmt.Errorf("opening raft stable store %s: %w", path, err)
	}
	return s, nil
}

// openRaftStores opens the stable store and the log under raftDir,
// moving a log left in raft.db into raft-wal first.
func openRaftStores(raftDir string, cacheBytes int64, vfs types.VFS, nodeID string, logger *slog.Logger) (*raftboltdb.BoltStore, *logStore, error) {
	if err := os.MkdirAll(raftDir, 0o750); err != nil {
		return nil, nil, err
	}
	for _, leftover := range []string{walTmpName, raftDBNewName} {
		if err := os.RemoveAll(filepath.Join(raftDir, leftover)); err != nil {
			return nil, nil, err
		}
	}
	dbPath := filepath.Join(raftDir, raftDBName)
	stable, err := openBolt(dbPath)
	if err != nil {
		return nil, nil, err
	}
	last, err := stable.LastIndex()
	if err == nil && last > 0 {
		stable, err = migrateBoltLog(raftDir, stable, nodeID, logger)
	}
	if err != nil {
		if stable != nil {
			stable.Close()
		}
		return nil, nil, err
	}
	logs, err := openLogStore(filepath.Join(raftDir, walDirName), cacheBytes, vfs, nodeID, logger)
	if err != nil {
		stable.Close()
		return nil, nil, err
	}
	return stable, logs, nil
}

// migrateBoltLog moves the log in old (raft.db) into raft/wal and replaces
// raft.db with one that holds only the stable keys; it returns the new
// stable store (old is closed).
func migrateBoltLog(raftDir string, old *raftboltdb.BoltStore, nodeID string, logger *slog.Logger) (*raftboltdb.BoltStore, error) {
	walDir := filepath.Join(raftDir, walDirName)
	if _, err := os.Stat(walDir); errors.Is(err, os.ErrNotExist) {
		if err := copyBoltLog(raftDir, old, nodeID, logger); err != nil {
			return old, err
		}
	} else if err != nil {
		return old, err
	}
	vals := make(map[string][]byte)
	for _, k := range stableKeys {
		v, err := old.Get(k)
		if err != nil && err.Error() != raftboltdb.ErrKeyNotFound.Error() {
			return old, fmt.Errorf("reading %s from raft.db: %w", k, err)
		}
		if len(v) > 0 {
			vals[string(k)] = v
		}
	}
	if err := old.Close(); err != nil {
		return nil, err
	}
	newPath := filepath.Join(raftDir, raftDBNewName)
	fresh, err := openBolt(newPath)
	if err != nil {
		return nil, err
	}
	for k, v := range vals {
		if err := fresh.Set([]byte(k), v); err != nil {
			fresh.Close()
			return nil, err
		}
	}
	if err := fresh.Close(); err != nil {
		return nil, err
	}
	if err := os.Rename(newPath, filepath.Join(raftDir, raftDBName)); err != nil {
		return nil, err
	}
	if err := atomicfile.SyncDir(raftDir); err != nil {
		return nil, err
	}
	logger.Info("raft log moved to raft-wal; raft.db now holds only the term and vote", "dir", raftDir)
	return openBolt(filepath.Join(raftDir, raftDBName))
}

func copyBoltLog(raftDir string, old *raftboltdb.BoltStore, nodeID string, logger *slog.Logger) error {
	tmp := filepath.Join(raftDir, walTmpName)
	if err := os.MkdirAll(tmp, 0o750); err != nil {
		return err
	}
	w, err := wal.Open(tmp, wal.WithLogger(raftLogger(logger, "raft-wal", hclog.Info)))
	if err != nil {
		return err
	}
	progress := make(chan string, 64)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for msg := range progress {
			logger.Info("moving raft log from raft.db to raft-wal", "progress", msg)
		}
	}()
	err = migrate.CopyLogs(context.Background(), w, old, 16<<20, progress)
	<-done
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("moving the raft log from raft.db to raft-wal: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(raftDir, walDirName)); err != nil {
		return err
	}
	return atomicfile.SyncDir(raftDir)
}
