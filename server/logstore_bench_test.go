package server

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/hashicorp/raft"
)

// BenchmarkStoreLogs compares the Raft log stores on this machine's disk:
// raft-wal (what the node uses, behind logStore) and raft-boltdb/v2 (what
// it used before), for one entry per StoreLogs (a waiting producer's
// entry) and 64 (a follower catching up), 1 KiB entries. Every StoreLogs
// is durable before it returns (fsync).
//
//	go test -run '^$' -bench BenchmarkStoreLogs -benchtime 2000x ./server
func BenchmarkStoreLogs(b *testing.B) {
	stores := map[string]func(b *testing.B) raft.LogStore{
		"raft-wal": func(b *testing.B) raft.LogStore {
			s, err := openLogStore(filepath.Join(b.TempDir(), "wal"), 16<<20, nil, "b", slog.New(slog.DiscardHandler))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { s.Close() })
			return s
		},
		"raft-boltdb": func(b *testing.B) raft.LogStore {
			s, err := openBolt(filepath.Join(b.TempDir(), "raft.db"))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { s.Close() })
			return s
		},
	}
	for _, name := range []string{"raft-wal", "raft-boltdb"} {
		for _, batch := range []int{1, 64} {
			b.Run(fmt.Sprintf("%s/entries=%d", name, batch), func(b *testing.B) {
				s := stores[name](b)
				data := make([]byte, 1024)
				logs := make([]*raft.Log, batch)
				next := uint64(1)
				b.SetBytes(int64(batch * len(data)))
				b.ResetTimer()
				for range b.N {
					for j := range logs {
						logs[j] = &raft.Log{Index: next, Term: 1, Type: raft.LogCommand, Data: data}
						next++
					}
					if err := s.StoreLogs(logs); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "entries/s")
			})
		}
	}
}
