package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tsstore/tsstore/client"
	"github.com/tsstore/tsstore/segment"
	"github.com/tsstore/tsstore/server"
)

// TestRepairCLI damages a sealed segment of one node of a three-node
// cluster where nothing reads it, then runs `tsstore repair` against that
// node: the full check finds it, repairs it from a peer and says so
// (--json); the node's file is then the peers' byte for byte, and a second
// run of one segment (text) finds it healthy. A --from that names no
// member is refused.
func TestRepairCLI(t *testing.T) {
	var peers []server.Peer
	var cfgs []server.Config
	for i := range 3 {
		cfg := server.DefaultConfig()
		cfg.NodeID, cfg.DataDir, cfg.RaftAddr, cfg.APIAddr = fmt.Sprintf("n%d", i+1), t.TempDir(), freeAddr(t), freeAddr(t)
		cfg.HeartbeatTimeout, cfg.ElectionTimeout, cfg.LeaderLeaseTimeout = 200*time.Millisecond, 200*time.Millisecond, 100*time.Millisecond
		cfg.Segment.SegmentBytes = 64 << 10
		cfg.MinFreeBytes = 0
		peers = append(peers, server.Peer{ID: cfg.NodeID, RaftAddr: cfg.RaftAddr})
		cfgs = append(cfgs, cfg)
	}
	var nodes []*server.Node
	var addrs []string
	for _, cfg := range cfgs {
		cfg.Bootstrap = peers
		n, err := server.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		nodes = append(nodes, n)
		addrs = append(addrs, n.APIAddr())
	}
	ccfg := client.DefaultConfig()
	ccfg.Addrs = addrs
	cl, err := client.New(ccfg)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := cl.NewProducer("repair-cli")
	var last uint64
	for i := range 40 {
		var evs []client.Event
		for range 10 {
			evs = append(evs, client.Event{Stream: "run/r", Type: "Step", Payload: []byte(strings.Repeat("x", 400))})
		}
		res, err := p.Append(ctx, evs...)
		if err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
		last = res.LastOffset
	}
	for _, n := range nodes {
		if err := n.Processor().WaitNextOffset(ctx, last+1); err != nil {
			t.Fatal(err)
		}
	}
	target := nodes[1]
	var seg segment.SegmentInfo
	target.Processor().WithLog(func(l *segment.Log) error { seg = l.Segments()[1]; return nil })
	if !seg.Sealed {
		t.Fatalf("segment %+v is not sealed", seg)
	}
	good, err := os.ReadFile(strings.Replace(seg.Path, cfgs[1].DataDir, cfgs[0].DataDir, 1))
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
