package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/metadata"

	"github.com/tsstore/tsstore/backup"
	"github.com/tsstore/tsstore/internal/atomicfile"
	pb "github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/server"
)

// backupResult is what `tsstore backup --json` prints.
type backupResult struct {
	File      string      `json:"file"`
	FileBytes int64       `json:"file_bytes"`
	Address   string      `json:"node_address"`
	Info      backup.Info `json:"info"`
}

func newBackupCmd() *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{Use: "backup [--node ID] FILE", Short: "write a consistent backup of the store to a file", Args: exactArgs("FILE")}
	fs := cmd.Flags()
	// A backup of a large store takes as long as it takes: no --timeout
	// unless given.
	cf.registerTimeout(fs, 0)
	node := fs.String("node", "", "node id to back up from (default: the node at the first --addr)")
	inline := fs.Bool("include-tiered", false, "write tiered segments' bytes, read from the tier target by the node (a self-contained file); default: reference their objects, which restore then needs")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return runBackup(cmd, &cf, *node, args[0], *inline)
	}
	return cmd
}

func runBackup(cmd *cobra.Command, cf *clientFlags, node, path string, includeTiered bool) error {
	stdout, stderr := stdio(cmd)
	if _, err := os.Stat(path); err == nil {
		return fmt.Errorf("%s already exists; choose a new file name", path)
	} else if !errors.Is(err, iofs.ErrNotExist) {
		return err
	}
	// Ctrl-C or SIGTERM ends the stream; writeBackup then removes FILE.tmp.
	ctx, cancel := cf.context()
	defer cancel()
	if includeTiered {
		ctx = metadata.AppendToOutgoingContext(ctx, server.IncludeTieredMD, "1")
	}
	cl, cc, addr, err := cf.clusterNode(ctx, node)
	if err != nil {
		return err
	}
	defer cl.Close()
	stream, err := cc.Backup(ctx, &pb.BackupRequest{})
	if err != nil {
		return fmt.Errorf("backup from %s: %w", addr, err)
	}
	first, err := stream.Recv()
	if err != nil {
		return fmt.Errorf("backup from %s: %w", addr, err)
	}
	if first.Info == nil {
		return fmt.Errorf("backup from %s: the first message carries no info", addr)
	}
	pi := first.Info
	info := backup.Info{Cluster: pi.Cluster, NodeID: pi.NodeId, RaftIndex: pi.RaftIndex, RaftTerm: pi.RaftTerm,
		NextOffset: pi.NextOffset, SizeBytes: pi.SizeBytes, CreatedUnixNano: pi.CreatedUnixNano}
	size, err := writeBackup(path, info, stream, newProgressBar(stderr, "backup"))
	if err != nil {
		return err
	}
	if cf.json {
		return json.NewEncoder(stdout).Encode(backupResult{File: path, FileBytes: size, Address: addr, Info: info})
	}
	fmt.Fprintf(stdout, "backup of cluster %s from node %s (%s): raft index %d, term %d, offsets [0, %d), %s, taken %s\nwrote %s (%s)\n",
		info.Cluster, info.NodeID, addr, info.RaftIndex, info.RaftTerm, info.NextOffset, humanBytes(int64(info.SizeBytes)),
		time.Unix(0, info.CreatedUnixNano).UTC().Format(time.RFC3339), path, humanBytes(size))
	return nil
}

// writeBackup writes the file as path.tmp, fsyncs it and renames it into
// place; a failure removes the temporary file and publishes nothing.
func writeBackup(path string, info backup.Info, stream pb.Cluster_BackupClient, bar *progressBar) (size int64, err error) {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o640)
	if err != nil {
		return 0, err
	}
	defer func() {
		bar.finish()
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	bw := bufio.NewWriterSize(f, 1<<20)
	w, err := backup.NewWriter(bw, info)
	if err != nil {
		return 0, err
	}
	for {
		c, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return 0, fmt.Errorf("backup stream broke after %d of %d bytes: %w", w.Written(), info.SizeBytes, err)
		}
		if _, err := w.Write(c.Data); err != nil {
			return 0, err
		}
		bar.update(int64(w.Written()), int64(info.SizeBytes))
	}
	if err := w.Close(); err != nil {
		return 0, err
	}
	if err := bw.Flush(); err != nil {
		return 0, err
	}
	if err := f.Sync(); err != nil {
		return 0, err
	}
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if err := f.Close(); err != nil {
		return 0, err
	}
	if err := os.Rename(tmp, path); err != nil {
		return 0, err
	}
	return fi.Size(), atomicfile.SyncDir(filepath.Dir(path))
}
