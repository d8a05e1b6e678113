package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tsstore/tsstore/fsm"
	"github.com/tsstore/tsstore/segment"
	"github.com/tsstore/tsstore/server"
	"github.com/tsstore/tsstore/tiering"
)

// TestVerifyTieredCLI tiers a one-node cluster's sealed segments to a
// directory, checks them with `tsstore verify --tiered`, then deletes
// one index bundle (a note, exit 0) and flips a byte of another (exit
// 1), then flips a byte of one object and deletes another: both are
// reported, exit 1.
func TestVerifyTieredCLI(t *testing.T) {
	tierDir := t.TempDir()
	target, err := tiering.NewFSTarget(tierDir)
	if err != nil {
		t.Fatal(err)
	}
	tc, ctx := startFilled(t, 1, "verify-tiered", func(c *server.Config) {
		c.Tier = server.TierConfig{Target: target, HotBytes: 1, Interval: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond, SweepInterval: time.Hour}
	})
	n := tc.Nodes[0]
	addr := "--addr=" + tc.Addrs[0]
	var segs []fsm.ManifestEntry
	for {
		ch := n.Processor().Changed()
		segs = n.Processor().Retention().Segments
		tiered := len(segs) >= 2
		for _, e := range segs {
			tiered = tiered && e.State == fsm.SegmentTiered
		}
		if tiered {
			break
		}
		select {
		case <-ch:
		case <-ctx.Done():
			t.Fatalf("segments not tiered: %+v", segs)
		}
	}

	out, errOut, code := runCmd("verify", "--tiered", "--json", addr)
	var res tieredVerifyResult
	if err := json.Unmarshal([]byte(out), &res); code != 0 || err != nil || !res.OK || len(res.Objects) != len(segs) {
		t.Fatalf("verify --tiered: exit %d, %v\n%s%s", code, err, out, errOut)
	}

	// Every object has its index bundle: no notes.
	for _, o := range res.Objects {
		if o.Note != "" {
			t.Fatalf("verify --tiered: a note on %s: %s", o.Key, o.Note)
		}
	}
	// A missing bundle (an object tiered before bundles) is a note, not
	// damage; a corrupt one is damage.
	bundle := func(e fsm.ManifestEntry) string {
		return filepath.Join(tierDir, filepath.FromSlash(strings.TrimSuffix(e.Key, ".log")+".idx"))
	}
	// `tsstore dump` of a bundle copied out of the target shows it.
	out, errOut, code = runCmd("dump", bundle(segs[0]))
	if want := fmt.Sprintf("index bundle of segment [%d, %d), %d bytes of .log", segs[0].BaseOffset, segs[0].NextOffset, segs[0].Size); code != 0 ||
		!strings.Contains(out, want) || !strings.Contains(out, "contents: ok") {
		t.Fatalf("dump of a bundle: exit %d, want %q\n%s%s", code, want, out, errOut)
	}
	if err := os.Remove(bundle(segs[0])); err != nil {
		t.Fatal(err)
	}
	out, errOut, code = runCmd("verify", "--tiered", addr)
	if code != 0 || !strings.Contains(out, segment.FileName(segs[0].BaseOffset)+": "+segs[0].Key+": note: no index bundle") ||
		!strings.Contains(out, "1 of them have no index bundle") {
		t.Fatalf("verify --tiered without a bundle: exit %d\n%s%s", code, out, errOut)
	}
	bb, err := os.ReadFile(bundle(segs[1]))
	if err != nil {
		t.Fatal(err)
	}
	bb[len(bb)-5] ^= 0x01
	if err := os.WriteFile(bundle(segs[1]), bb, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, code := runCmd("dump", bundle(segs[1])); code != 1 {
		t.Fatalf("dump of a corrupt bundle: exit %d, want 1", code)
	}
	out, errOut, code = runCmd("verify", "--tiered", addr)
	if code != 1 || !strings.Contains(out, segment.FileName(segs[1].BaseOffset)+": "+segs[1].Key+": BAD: segment: corrupt "+
		strings.TrimSuffix(segs[1].Key, ".log")+".idx") || !strings.Contains(out, "index bundle: ") {
		t.Fatalf("verify --tiered with a corrupt bundle: exit %d\n%s%s", code, out, errOut)
	}

	// Rot one object, lose another.
	p0 := filepath.Join(tierDir, filepath.FromSlash(segs[0].Key))
	b, err := os.ReadFile(p0)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x20
	if err := os.WriteFile(p0, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(tierDir, filepath.FromSlash(segs[1].Key))); err != nil {
		t.Fatal(err)
	}
	out, errOut, code = runCmd("verify", "--tiered", addr)
	if code != 1 || !strings.Contains(out, segment.FileName(segs[0].BaseOffset)+": "+segs[0].Key+": BAD: crc32c") ||
		!strings.Contains(out, segment.FileName(segs[1].BaseOffset)+": "+segs[1].Key+": BAD: ") || !strings.Contains(out, "not found") {
		t.Fatalf("verify --tiered after rot and loss: exit %d\n%s%s", code, out, errOut)
	}
	if _, _, code := runCmd("verify", "--tiered", "--cluster", addr); code != 2 {
		t.Fatalf("--tiered with --cluster: exit %d, want 2", code)
	}
}
