package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	pb "github.com/tsstore/tsstore/proto/tsstorev1"
	"github.com/tsstore/tsstore/segment"
)

// errTieredBad makes verify --tiered exit 1 after it printed.
var errTieredBad = errors.New("tiered objects missing or corrupt")

// tieredVerifyResult is what `tsstore verify --tiered --json` prints.
type tieredVerifyResult struct {
	OK      bool                 `json:"ok"`
	NodeID  string               `json:"node_id"`
	Target  string               `json:"target"`
	Objects []tieredVerifyObject `json:"objects"`
}

type tieredVerifyObject struct {
	BaseOffset     uint64 `json:"base_offset"`
	NextOffset     uint64 `json:"next_offset"`
	Key            string `json:"key"`
	Size           uint64 `json:"size_bytes"`
	ManifestDigest string `json:"manifest_digest"`
	ReadBytes      uint64 `json:"read_bytes"`
	Digest         string `json:"digest"`
	OK             bool   `json:"ok"`
	Problem        string `json:"problem,omitempty"`
	// Note is not a problem: the object has no index bundle beside it.
	Note string `json:"note,omitempty"`
}

// registerVerifyTiered adds verify's --tiered flag; it shares the client
// flags of --cluster.
func registerVerifyTiered(cmd *cobra.Command) *bool {
	return cmd.Flags().Bool("tiered", false, "read every tiered segment's object from the tier target now (on the leader) and check its size and CRC-32C against the manifest, and decode its index bundle (no --data-dir)")
}

// runVerifyTiered asks the leader to read every tiered object whole.
func runVerifyTiered(cmd *cobra.Command, cf *clientFlags, asJSON bool) error {
	cl, ctx, cancel, err := cf.connect()
	if err != nil {
		return err
	}
	defer cancel()
	defer cl.Close()
	c, err := retentionClient(cl, cf.addrList()[0])
	if err != nil {
		return err
	}
	resp, err := c.VerifyTiered(ctx, &pb.VerifyTieredRequest{})
	if err != nil {
		return statusError(err)
	}
	res := tieredResult(resp)
	if asJSON {
		json.NewEncoder(cmd.OutOrStdout()).Encode(res)
	} else {
		printVerifyTiered(cmd.OutOrStdout(), &res)
	}
	if !res.OK {
		return fmt.Errorf("%w: see docs/operations.md, Cold tiering", errTieredBad)
	}
	return nil
}

func tieredResult(resp *pb.VerifyTieredResponse) tieredVerifyResult {
	res := tieredVerifyResult{OK: true, NodeID: resp.NodeId, Target: resp.Target, Objects: []tieredVerifyObject{}}
	for _, o := range resp.Objects {
		v := tieredVerifyObject{BaseOffset: o.BaseOffset, NextOffset: o.NextOffset, Key: o.ObjectKey, Size: o.SizeBytes,
			ManifestDigest: fmt.Sprintf("%08x", o.ManifestDigest), ReadBytes: o.ReadBytes, Digest: fmt.Sprintf("%08x", o.Digest), OK: true, Note: o.Note}
		switch {
		case o.Error != "":
			v.OK, v.Problem = false, o.Error
		case o.ReadBytes != o.SizeBytes:
			v.OK, v.Problem = false, fmt.Sprintf("%d bytes, the segment has %d", o.ReadBytes, o.SizeBytes)
		case o.Digest != o.ManifestDigest:
			v.OK, v.Problem = false, fmt.Sprintf("crc32c %08x, the segment's is %08x", o.Digest, o.ManifestDigest)
		}
		res.OK = res.OK && v.OK
		res.Objects = append(res.Objects, v)
	}
	return res
}

func printVerifyTiered(w io.Writer, r *tieredVerifyResult) {
	fmt.Fprintf(w, "leader %s read %d tiered objects from %s\n", r.NodeID, len(r.Objects), r.Target)
	notes := 0
	for _, o := range r.Objects {
		if !o.OK {
			fmt.Fprintf(w, "%s: %s: BAD: %s\n", segment.FileName(o.BaseOffset), o.Key, o.Problem)
		}
		if o.Note != "" {
			notes++
			fmt.Fprintf(w, "%s: %s: note: %s\n", segment.FileName(o.BaseOffset), o.Key, o.Note)
		}
	}
	if r.OK {
		fmt.Fprintf(w, "%d tiered objects: every one holds its segment's bytes\n", len(r.Objects))
	}
	if notes > 0 {
		fmt.Fprintf(w, "%d of them have no index bundle (not damage: their index files are rebuilt from the object if a node loses them)\n", notes)
	}
}
