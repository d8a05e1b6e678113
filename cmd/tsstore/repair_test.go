package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/tsstore/tsstore/segment"
)

// TestRepairCLI damages a sealed segment of one node of a three-node
// cluster where nothing reads it, then runs `tsstore repair` against that
// node: the full check finds it, repairs it from a peer and says so
// (--json); the node's file is then the peers' byte for byte, and a second
// run of one segment (text) finds it healthy. A --from that names no
// member is refused.
func TestRepairCLI(t *testing.T) {
	tc, _ := startFilled(t, 3, "repair-cli", nil)
	nodes := tc.Nodes
	target := nodes[1]
	var seg segment.SegmentInfo
	target.Processor().WithLog(func(l *segment.Log) error { seg = l.Segments()[1]; return nil })
	if !seg.Sealed {
		t.Fatalf("segment %+v is not sealed", seg)
	}
	var peerSeg segment.SegmentInfo
	nodes[0].Processor().WithLog(func(l *segment.Log) error { peerSeg = l.Segments()[1]; return nil })
	good, err := os.ReadFile(peerSeg.Path)
	if err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(good)
	bad[len(bad)/2] ^= 0x10
	if err := os.WriteFile(seg.Path, bad, 0o644); err != nil {
		t.Fatal(err)
	}

	out, errOut, code := runCmd("repair", "--addr", target.APIAddr(), "--json", "--timeout", "30s")
	var res repairResult
	if err := json.Unmarshal([]byte(out), &res); code != 0 || err != nil {
		t.Fatalf("repair: exit %d, %v\n%s%s", code, err, out, errOut)
	}
	if res.NodeID != "n2" || !res.OK || res.Checked < 2 || len(res.Segments) != 1 {
		t.Fatalf("repair --json: %+v", res)
	}
	if s := res.Segments[0]; s.BaseOffset != seg.BaseOffset || s.Result != "repaired" || s.From == "" || s.From == "n2" ||
		s.SizeBytes != uint64(len(good)) || !strings.Contains(s.Damage, segment.FileName(seg.BaseOffset)) {
		t.Fatalf("repair --json segment: %+v", s)
	}
	if onDisk, _ := os.ReadFile(seg.Path); !bytes.Equal(onDisk, good) {
		t.Fatal("the repaired file differs from the peer's")
	}

	out, errOut, code = runCmd("repair", "--addr", target.APIAddr(), "--segment", fmt.Sprint(seg.BaseOffset))
	if code != 0 || !strings.Contains(out, "checked 1 sealed segments") || !strings.Contains(out, segment.FileName(seg.BaseOffset)+": healthy") {
		t.Fatalf("repair --segment: exit %d\n%s%s", code, out, errOut)
	}
	bad[len(bad)/3] ^= 0x10
	if err := os.WriteFile(seg.Path, bad, 0o644); err != nil {
		t.Fatal(err)
	}
	_, errOut, code = runCmd("repair", "--addr", target.APIAddr(), "--segment", fmt.Sprint(seg.BaseOffset), "--from", "n9")
	if code != 1 || !strings.Contains(errOut, "could not be repaired") {
		t.Fatalf("repair --from an unknown node: exit %d, %q", code, errOut)
	}
	if _, _, code := runCmd("repair", "--addr", target.APIAddr(), "--segment", "x"); code != 2 {
		t.Fatalf("--segment x: exit %d, want 2 (usage)", code)
	}
}
