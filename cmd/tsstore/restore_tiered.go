package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/tsstore/tsstore/fsm"
	"github.com/tsstore/tsstore/segment"
	"github.com/tsstore/tsstore/tiering"
)

// tieredCheck is what restore (and its --dry-run) found of the objects a
// backup references (a version 2 snapshot stream's tiered segments).
type tieredCheck struct {
	// Checked is false when no tier target was named: nothing was asked.
	Checked bool `json:"checked"`
	// OK is false when a checked object is missing or differs.
	OK      bool                `json:"ok"`
	Target  string              `json:"target,omitempty"`
	Objects []tieredCheckObject `json:"objects"`
}

type tieredCheckObject struct {
	BaseOffset uint64 `json:"base_offset"`
	NextOffset uint64 `json:"next_offset"`
	Key        string `json:"key"`
	Size       int64  `json:"size_bytes"`
	Checksum   string `json:"checksum"`
	Problem    string `json:"problem,omitempty"`
}

// checkTiered checks each referenced object with a HEAD (size and
// CRC-32C) when tf names a target; it reads none of their bytes.
func checkTiered(tf *tierFlags, refs []fsm.TieredSegment) (tieredCheck, error) {
	tc := tieredCheck{OK: true, Objects: []tieredCheckObject{}}
	if len(refs) == 0 {
		return tc, nil
	}
	target, err := tf.target()
	if err != nil {
		return tc, err
	}
	tc.Checked = target != nil
	if target != nil {
		tc.Target = target.String()
	}
	for _, r := range refs {
		o := tieredCheckObject{BaseOffset: r.BaseOffset, NextOffset: r.NextOffset, Key: r.Key, Size: r.Size, Checksum: fmt.Sprintf("%08x", r.Checksum)}
		if target != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			info, err := target.Head(ctx, r.Key)
			cancel()
			switch {
			case errors.Is(err, tiering.ErrNotFound):
				o.Problem = "missing"
			case err != nil:
				o.Problem = err.Error()
			case info.Size != r.Size || info.Checksum != r.Checksum:
				o.Problem = fmt.Sprintf("%d bytes, crc32c %08x; the backup says %d bytes, crc32c %08x", info.Size, info.Checksum, r.Size, r.Checksum)
			}
			tc.OK = tc.OK && o.Problem == ""
		}
		tc.Objects = append(tc.Objects, o)
	}
	return tc, nil
}

func printTieredCheck(w io.Writer, tc tieredCheck) {
	if len(tc.Objects) == 0 {
		return
	}
	if !tc.Checked {
		fmt.Fprintf(w, "%d tiered segments are referenced by object and NOT checked (no --tier-dir or --tier-s3-bucket); restore needs them in the tier target:\n", len(tc.Objects))
		for _, o := range tc.Objects {
			fmt.Fprintf(w, "  %s: %s (%d bytes, crc32c %s)\n", segment.FileName(o.BaseOffset), o.Key, o.Size, o.Checksum)
		}
		return
	}
	bad := 0
	for _, o := range tc.Objects {
		if o.Problem != "" {
			bad++
			fmt.Fprintf(w, "%s: %s: BAD: %s\n", segment.FileName(o.BaseOffset), o.Key, o.Problem)
		}
	}
	if bad == 0 {
		fmt.Fprintf(w, "%d tiered objects referenced, each present in %s with the backup's size and crc32c\n", len(tc.Objects), tc.Target)
	}
}
