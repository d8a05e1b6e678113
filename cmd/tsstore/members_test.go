package main

import (
	"bytes"
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/tsstore/tsstore/server"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestMembersCLI drives `tsstore members` and `tsstore leader transfer`
// against a one-node cluster: the table, --json, add, refusals with their
// gRPC code and message, and remove.
func TestMembersCLI(t *testing.T) {
	cfg := server.DefaultConfig()
	cfg.NodeID, cfg.DataDir, cfg.RaftAddr, cfg.APIAddr = "n1", t.TempDir(), freeAddr(t), freeAddr(t)
	cfg.Bootstrap = []server.Peer{{ID: "n1", RaftAddr: cfg.RaftAddr}}
	cfg.HeartbeatTimeout, cfg.ElectionTimeout, cfg.LeaderLeaseTimeout = 200*time.Millisecond, 200*time.Millisecond, 100*time.Millisecond
	n, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	addr := "--addr=" + n.APIAddr()
	tsstore := func(args ...string) (int, string, string) {
		var out, errOut bytes.Buffer
		code := run(append(args, addr), &out, &errOut)
		return code, out.String(), errOut.String()
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, out, _ := tsstore("members")
		if code == 0 && strings.Contains(out, "leader n1") && !strings.Contains(out, "not registered") {
			if !strings.Contains(out, "ID  ") || !strings.Contains(out, "voter     *") {
				t.Fatalf("members table:\n%s", out)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no leader listed: exit %d\n%s", code, out)
		}
		time.Sleep(50 * time.Millisecond)
	}

	raft2 := freeAddr(t)
	if code, out, errOut := tsstore("members", "add", "n2", raft2); code != 0 || !strings.Contains(out, "added n2 (raft "+raft2+") as a non-voter") {
		t.Fatalf("add: exit %d, %q %q", code, out, errOut)
	}
	if code, _, errOut := tsstore("members", "add", "n2", raft2); code != 1 || !strings.Contains(errOut, "AlreadyExists: node n2 is already a member") {
		t.Fatalf("add twice: exit %d, %q", code, errOut)
	}
	code, out, _ := tsstore("members", "--json")
	var js struct {
		LeaderID string `json:"leader_id"`
		Members  []struct {
			ID       string `json:"id"`
			Suffrage string `json:"suffrage"`
			Error    string `json:"error"`
		} `json:"members"`
	}
	if err := json.Unmarshal([]byte(out), &js); code != 0 || err != nil || js.LeaderID != "n1" || len(js.Members) != 2 ||
		js.Members[1].ID != "n2" || js.Members[1].Suffrage != "nonvoter" || !strings.Contains(js.Members[1].Error, "not registered") {
		t.Fatalf("members --json: exit %d, %v\n%s", code, err, out)
	}
	if code, _, errOut := tsstore("members", "promote", "n2", "--max-lag", "10"); code != 1 || !strings.Contains(errOut, "FailedPrecondition: node n2 has not registered") {
		t.Fatalf("promote an unstarted node: exit %d, %q", code, errOut)
	}
	if code, _, errOut := tsstore("members", "remove", "n1"); code != 1 || !strings.Contains(errOut, "FailedPrecondition: node n1 is the last voter") {
		t.Fatalf("remove the last voter: exit %d, %q", code, errOut)
	}
	if code, _, errOut := tsstore("leader", "transfer", "--to", "n2"); code != 1 || !strings.Contains(errOut, "NotFound") {
		t.Fatalf("transfer to a non-voter: exit %d, %q", code, errOut)
	}
	if code, out, errOut := tsstore("members", "remove", "n2"); code != 0 || !strings.Contains(out, "removed n2") {
		t.Fatalf("remove: exit %d, %q %q", code, out, errOut)
	}
	if code, _, errOut := tsstore("members", "remove", "n2"); code != 1 || !strings.Contains(errOut, "NotFound") {
		t.Fatalf("remove twice: exit %d, %q", code, errOut)
	}
	if code, _, _ := tsstore("members", "add", "n3"); code != 2 {
		t.Fatalf("add without an address: exit %d, want 2 (usage)", code)
	}
}
