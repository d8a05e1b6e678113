package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/tsstore/tsstore/backup"
	"github.com/tsstore/tsstore/fsm"
	"github.com/tsstore/tsstore/server"
)

// peerJSON is a server.Peer in snake_case.
type peerJSON struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft_addr"`
}

// restoreResult is what `tsstore restore --json` prints.
type restoreResult struct {
	DataDir string      `json:"data_dir"`
	NodeID  string      `json:"node_id"`
	Cluster string      `json:"cluster"`
	Peers   []peerJSON  `json:"peers"`
	Info    backup.Info `json:"backup"`
}

func newRestoreCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "restore --backup FILE --data-dir DIR --node-id ID --peers id1=raft-host:port,... [--cluster NAME | --rename-cluster NEW]",
		Short: "seed one node of a new cluster from a backup (offline)",
		Long: "restore seeds one node of a new cluster from a backup file.\n" +
			"restore --dry-run --backup FILE checks the file end to end and writes nothing (exit 1 if it is damaged).",
		Args: noArgs,
	}
	var f restoreFlags
	fs := cmd.Flags()
	fs.StringVar(&f.file, "backup", "", "backup file written by 'tsstore backup' (required)")
	fs.StringVar(&f.dataDir, "data-dir", "", "data directory of the new node; must not exist or be empty (required)")
	fs.StringVar(&f.nodeID, "node-id", "", "this node's id in the new cluster (required)")
	fs.StringVar(&f.peersFlag, "peers", "", "every voter of the new cluster, this node included, as id=raft-host:port,...; the same on every node (required)")
	fs.StringVar(&f.cluster, "cluster", "", "refuse unless the backup is of this cluster")
	fs.StringVar(&f.rename, "rename-cluster", "", "give the new cluster this name instead of the backup's")
	fs.BoolVar(&f.asJSON, "json", false, "print JSON instead of text")
	fs.BoolVar(&f.dryRun, "dry-run", false, "check the backup file end to end (checksum, snapshot header, every batch's CRC and offsets; the objects of referenced tiered segments with a tier target) and write nothing")
	f.tier.addTargetFlags(fs)
	cmd.MarkFlagsMutuallyExclusive("cluster", "rename-cluster")
	cmd.RunE = func(cmd *cobra.Command, args []string) error { return runRestore(cmd, &f) }
	return cmd
}

// restoreFlags are restore's settings.
type restoreFlags struct {
	file, dataDir, nodeID, peersFlag, cluster, rename string
	asJSON, dryRun                                    bool
	// tier names the tier target that holds the objects of the tiered
	// segments a backup references (checked with a HEAD each).
	tier tierFlags
}

func runRestore(cmd *cobra.Command, rf *restoreFlags) error {
	stdout, stderr := stdio(cmd)
	switch {
	case rf.dryRun && rf.file != "":
		return checkBackupFile(rf, stdout, stderr)
	case rf.file == "" || rf.dataDir == "" || rf.nodeID == "" || rf.peersFlag == "":
		return fmt.Errorf("%w: --backup, --data-dir, --node-id and --peers are required", errUsage)
	case rf.cluster != "" && rf.rename != "":
		return fmt.Errorf("%w: give --cluster (check the backup's name) or --rename-cluster (change it), not both", errUsage)
	}
	peers, err := parsePeers(rf.peersFlag)
	if err != nil {
		return err
	}
	bar := newProgressBar(stderr, "verify ")
	f, err := backup.Open(rf.file, bar.update)
	bar.finish()
	if err != nil {
		return err
	}
	defer f.Close()
	info := f.Info
	si, stream, err := fsm.ReadSnapshotInfo(f.Stream())
	if err != nil {
		return fmt.Errorf("%w: backup %s: %v", errCorrupt, rf.file, err)
	}
	if len(si.Tiered) > 0 {
		// The backup references objects: check them when a target is
		// named, and say the new nodes need it either way.
		tc, err := checkTiered(&rf.tier, si.Tiered)
		if err != nil {
			return err
		}
		if !tc.OK {
			printTieredCheck(stdout, tc)
			return fmt.Errorf("%w: the backup references tiered objects that are missing or differ", server.ErrRestoreRefused)
		}
		if !tc.Checked {
			fmt.Fprintf(stderr, "warning: the backup references %d tiered objects (first %s) that were not checked: give --tier-dir or --tier-s3-bucket to check them\n", len(si.Tiered), si.Tiered[0].Key)
		}
		fmt.Fprintf(stderr, "the backup references %d tiered segments by object: start the new nodes with the tier target that holds them\n", len(si.Tiered))
	}
	name := info.Cluster
	switch {
	case rf.cluster != "" && rf.cluster != info.Cluster:
		return fmt.Errorf("%w: the backup is of cluster %q, not %q; use --rename-cluster %s to restore it under that name",
			server.ErrRestoreRefused, info.Cluster, rf.cluster, rf.cluster)
	case rf.rename != "":
		name = rf.rename
	}
	wbar := newProgressBar(stderr, "restore")
	err = server.Restore(server.RestoreConfig{
		DataDir: rf.dataDir, NodeID: rf.nodeID, ClusterName: name, Peers: peers,
		RaftIndex: info.RaftIndex, RaftTerm: info.RaftTerm, NextOffset: info.NextOffset,
		Stream:         &progressReader{r: stream, bar: wbar, total: int64(info.SizeBytes)},
		SnapshotRetain: server.DefaultConfig().SnapshotRetain, Segment: server.DefaultConfig().Segment,
	})
	wbar.finish()
	if err != nil {
		return err
	}
	if rf.asJSON {
		return json.NewEncoder(stdout).Encode(restoreResult{DataDir: rf.dataDir, NodeID: rf.nodeID, Cluster: name, Peers: toPeersJSON(peers), Info: info})
	}
	var self string
	for _, p := range peers {
		if p.ID == rf.nodeID {
			self = p.RaftAddr
		}
	}
	ps := make([]string, len(peers))
	for i, p := range peers {
		ps[i] = p.ID + "=" + p.RaftAddr
	}
	fmt.Fprintf(stdout, "restored node %s of cluster %s into %s: raft index %d, term %d, next offset %d; voters %s\n",
		rf.nodeID, name, rf.dataDir, info.RaftIndex, info.RaftTerm, info.NextOffset, strings.Join(ps, ","))
	fmt.Fprintf(stdout, "start it with: tsstore serve --id %s --cluster %s --data-dir %s --raft-addr %s --api-addr HOST:PORT\n",
		rf.nodeID, name, rf.dataDir, self)
	return nil
}

// checkBackupFile is restore --dry-run: the file's length and SHA-256
// (backup.Open), then the snapshot stream inside it batch by batch, as a
// restore would read it; the tiered segments it references by object are
// checked with a HEAD each (size, CRC-32C) when a tier target is named,
// else listed as not checked.
func checkBackupFile(rf *restoreFlags, stdout, stderr io.Writer) error {
	path := rf.file
	bar := newProgressBar(stderr, "verify ")
	f, err := backup.Open(path, bar.update)
	bar.finish()
	if err != nil {
		return err
	}
	defer f.Close()
	si, stream, err := fsm.ReadSnapshotInfo(f.Stream())
	if err != nil {
		return fmt.Errorf("%w: backup %s: %v", errCorrupt, path, err)
	}
	n, err := io.Copy(io.Discard, fsm.VerifySnapshotStream(stream))
	if err != nil {
		return fmt.Errorf("%w: backup %s: %v", errCorrupt, path, err)
	}
	if uint64(n) != f.Info.SizeBytes {
		return fmt.Errorf("%w: backup %s: the snapshot stream is %d bytes, the header says %d", errCorrupt, path, n, f.Info.SizeBytes)
	}
	tc, err := checkTiered(&rf.tier, si.Tiered)
	if err != nil {
		return err
	}
	if rf.asJSON {
		json.NewEncoder(stdout).Encode(struct {
			File   string      `json:"file"`
			OK     bool        `json:"ok"`
			Info   backup.Info `json:"backup"`
			Tiered tieredCheck `json:"tiered"`
		}{path, tc.OK, f.Info, tc})
	} else {
		fmt.Fprintf(stdout, "%s: ok: cluster %s, node %s, raft index %d, offsets [0, %d), %s; every batch verified\n",
			path, f.Info.Cluster, f.Info.NodeID, f.Info.RaftIndex, f.Info.NextOffset, humanBytes(int64(f.Info.SizeBytes)))
		printTieredCheck(stdout, tc)
	}
	if !tc.OK {
		return fmt.Errorf("%w: backup %s references tiered objects that are missing or differ", errCorrupt, path)
	}
	return nil
}

func toPeersJSON(peers []server.Peer) []peerJSON {
	out := make([]peerJSON, len(peers))
	for i, p := range peers {
		out[i] = peerJSON{ID: p.ID, RaftAddr: p.RaftAddr}
	}
	return out
}
