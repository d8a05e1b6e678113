package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tsstore/tsstore/internal/proccluster"
	"github.com/tsstore/tsstore/segment"
	"github.com/tsstore/tsstore/server"
)

// The CLI's conventions (issue #15), checked through the built binary:
// flags anywhere, argument counts, usage errors exit 2 with a short
// message, help on stdout, suggestions, version, completion, TSSTORE_ADDR
// and the dial hint, --json errors, exit 1 when a check finds damage.

var cliBin struct {
	once sync.Once
	path string
	err  error
}

// tsstoreBinary builds the binary once for the package's tests.
func tsstoreBinary(t *testing.T) string {
	t.Helper()
	cliBin.once.Do(func() {
		dir, err := os.MkdirTemp("", "tsstore-cli-test-")
		if err != nil {
			cliBin.err = err
			return
		}
		cliBin.path, cliBin.err = proccluster.Build("../..", dir)
	})
	if cliBin.err != nil {
		t.Fatal(cliBin.err)
	}
	return cliBin.path
}

type cliResult struct {
	code           int
	stdout, stderr string
	took           time.Duration
}

// tsstoreCLI runs the binary with args and extra environment variables.
func tsstoreCLI(t *testing.T, env []string, args ...string) cliResult {
	t.Helper()
	cmd := exec.Command(tsstoreBinary(t), args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	start := time.Now()
	err := cmd.Run()
	r := cliResult{stdout: out.String(), stderr: errOut.String(), took: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("tsstore %q: %v", args, err)
	}
	return r
}

// deadAddr is a loopback address nothing listens on.
func deadAddr(t *testing.T) string { return freeAddr(t) }

func TestCLIUsageErrorsExit2WithAShortMessage(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{}, "a command is required"},
		{[]string{"status", "extra"}, `unexpected arguments ["extra"]`},
		{[]string{"read", "--from", "3", "extra"}, `unexpected arguments ["extra"]`},
		{[]string{"dump", "a.log", "b.log"}, "want FILE, got 2 argument(s)"},
		{[]string{"run", "show", "r1", "r2"}, "want RUN, got 2 argument(s)"},
		{[]string{"members", "add", "n4"}, "want ID RAFT-ADDR"},
		{[]string{"status", "--bogus"}, "unknown flag: --bogus"},
		{[]string{"raed"}, "read"}, // a suggestion
		{[]string{"run", "shwo", "r1"}, "did you mean show?"},
		{[]string{"append", "--stream", "s", "--type", "t"}, "[data stdin]"},                           // no empty event
		{[]string{"append", "--stream", "s", "--type", "t", "--data", "x", "--stdin"}, "[data stdin]"}, // not --data ignored
		{[]string{"append", "--type", "t", "--data", "x"}, `"stream" not set`},
		{[]string{"run", "state", "r1", "--at-step", "1", "--at-offset", "2"}, "at-step"},
		{[]string{"read", "--local", "--linearizable"}, "[linearizable local]"},
	} {
		r := tsstoreCLI(t, nil, tt.args...)
		if r.code != 2 || !strings.Contains(r.stderr, tt.want) || r.stdout != "" {
			t.Errorf("tsstore %q: exit %d, stdout %q, stderr %q; want exit 2 saying %q", tt.args, r.code, r.stdout, r.stderr, tt.want)
		}
		if lines := strings.Count(r.stderr, "\n"); lines > 4 {
			t.Errorf("tsstore %q: %d lines on stderr, want a short message:\n%s", tt.args, lines, r.stderr)
		}
	}
}

// Flags go before or after positional arguments; the address a flag after
// the argument names is the one dialled.
func TestCLIFlagsAfterArguments(t *testing.T) {
	dead := deadAddr(t)
	for _, args := range [][]string{
		{"backup", filepath.Join(t.TempDir(), "b.tsbackup"), "--addr", dead},
		{"members", "add", "n4", "127.0.0.1:1", "--voter", "--addr", dead},
		{"run", "show", "run/x", "--addr", dead, "--json"},
		{"--addr", dead, "status"},
	} {
		r := tsstoreCLI(t, nil, args...)
		if r.code != 1 || !strings.Contains(r.stderr, dead) {
			t.Errorf("tsstore %q: exit %d, stderr %q; want exit 1 naming %s", args, r.code, r.stderr, dead)
		}
	}
}

func TestCLIHelpOnStdout(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--help"}, "Available Commands:"},
		{[]string{"help", "read"}, "--from"},
		{[]string{"read", "--help"}, "--timeout"},
		{[]string{"run", "state", "-h"}, "--before-nan"},
		{[]string{"members", "add", "--help"}, "--voter"},
		{[]string{"bench", "--help"}, "--out"},
	} {
		r := tsstoreCLI(t, nil, tt.args...)
		if r.code != 0 || !strings.Contains(r.stdout, tt.want) || r.stderr != "" {
			t.Errorf("tsstore %q: exit %d, stderr %q, stdout without %q:\n%s", tt.args, r.code, r.stderr, tt.want, r.stdout)
		}
	}
}

func TestCLIVersion(t *testing.T) {
	r := tsstoreCLI(t, nil, "version")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "tsstore ") || !strings.Contains(r.stdout, runtime.Version()) {
		t.Fatalf("version: exit %d, %q %q", r.code, r.stdout, r.stderr)
	}
	r = tsstoreCLI(t, nil, "version", "--json")
	var v struct {
		Version   string `json:"version"`
		GoVersion string `json:"go_version"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil || r.code != 0 || v.Version == "" || v.GoVersion != runtime.Version() {
		t.Fatalf("version --json: exit %d, %v, %q", r.code, err, r.stdout)
	}
	if r := tsstoreCLI(t, nil, "--version"); r.code != 0 || !strings.HasPrefix(r.stdout, "tsstore "+v.Version) {
		t.Fatalf("--version: exit %d, %q", r.code, r.stdout)
	}
}

func TestCLICompletion(t *testing.T) {
	for shell, want := range map[string]string{"bash": "__start_tsstore", "zsh": "#compdef tsstore", "fish": "complete -c tsstore"} {
		r := tsstoreCLI(t, nil, "completion", shell)
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Errorf("completion %s: exit %d, stdout without %q (%d bytes), stderr %q", shell, r.code, want, len(r.stdout), r.stderr)
		}
	}
	// Flag names complete too (cobra's __complete protocol, which the
	// scripts call).
	r := tsstoreCLI(t, nil, "__complete", "read", "--fr")
	if r.code != 0 || !strings.Contains(r.stdout, "--from") {
		t.Errorf("__complete read --fr: exit %d, %q", r.code, r.stdout)
	}
}

// TSSTORE_ADDR is dialled when --addr is not given; a dial nothing answers
// fails fast, naming the addresses and what to set.
func TestCLIAddrFromEnvironmentAndDialHint(t *testing.T) {
	a, b := deadAddr(t), deadAddr(t)
	r := tsstoreCLI(t, []string{"TSSTORE_ADDR=" + a + "," + b}, "status")
	if r.code != 1 || !strings.Contains(r.stderr, a+", "+b) || !strings.Contains(r.stderr, "from TSSTORE_ADDR") ||
		!strings.Contains(r.stderr, "set --addr or TSSTORE_ADDR") {
		t.Fatalf("status with a dead TSSTORE_ADDR: exit %d, stderr %q", r.code, r.stderr)
	}
	t.Logf("status with a dead TSSTORE_ADDR failed after %v", r.took)
	// --addr wins over the environment.
	r = tsstoreCLI(t, []string{"TSSTORE_ADDR=" + a}, "streams", "--addr", b)
	if r.code != 1 || !strings.Contains(r.stderr, b+" (from --addr)") || strings.Contains(r.stderr, a) {
		t.Fatalf("--addr over TSSTORE_ADDR: exit %d, stderr %q", r.code, r.stderr)
	}
}

// With --json a failure is one JSON object on stderr.
func TestCLIJSONErrors(t *testing.T) {
	for _, tt := range []struct {
		args         []string
		code         int
		wantCode     string
		wantReason   string
		wantInString string
	}{
		{[]string{"status", "--json", "--addr", deadAddr(t)}, 1, "Unavailable", "UNREACHABLE", "set --addr or TSSTORE_ADDR"},
		{[]string{"run", "show", "--json"}, 2, "InvalidArgument", "USAGE", "want RUN"},
		{[]string{"read", "--json", "--bogus"}, 2, "InvalidArgument", "USAGE", "unknown flag: --bogus"},
		{[]string{"read", "--bogus", "--json"}, 2, "InvalidArgument", "USAGE", "unknown flag: --bogus"},
	} {
		r := tsstoreCLI(t, nil, tt.args...)
		var e map[string]any
		if err := json.Unmarshal([]byte(r.stderr), &e); err != nil || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
			t.Errorf("tsstore %q: stderr is not one JSON object (%v): %q", tt.args, err, r.stderr)
			continue
		}
		if r.code != tt.code || e["code"] != tt.wantCode || e["reason"] != tt.wantReason || !strings.Contains(e["message"].(string), tt.wantInString) {
			t.Errorf("tsstore %q: exit %d, %v; want exit %d, code %s, reason %s, message with %q", tt.args, r.code, e, tt.code, tt.wantCode, tt.wantReason, tt.wantInString)
		}
	}
}

// dump prints a damaged segment and exits 1, as verify does.
func TestCLIDumpOfACorruptSegmentExits1(t *testing.T) {
	file, _ := writeTestBackup(t)
	dir := filepath.Join(t.TempDir(), "data")
	if _, stderr, code := runCmd("restore", "--backup", file, "--data-dir", dir, "--node-id", "n1", "--peers", "n1=127.0.0.1:7001"); code != 0 {
		t.Fatal(stderr)
	}
	seg := filepath.Join(dir, "fsm", "log", segment.FileName(0))
	b, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(seg, b, 0o644); err != nil {
		t.Fatal(err)
	}
	r := tsstoreCLI(t, nil, "dump", seg)
	if r.code != 1 || !strings.Contains(r.stdout, "summary: ") || strings.Contains(r.stdout, " 0 problems") || !strings.Contains(r.stderr, "corruption found") {
		t.Fatalf("dump of a corrupt segment: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	r = tsstoreCLI(t, nil, "dump", seg, "--json")
	var d segment.LogDump
	if err := json.Unmarshal([]byte(r.stdout), &d); err != nil || r.code != 1 || d.Problems == 0 {
		t.Fatalf("dump --json of a corrupt segment: exit %d, %v\n%s", r.code, err, r.stdout)
	}
	var e errorJSON
	if err := json.Unmarshal([]byte(r.stderr), &e); err != nil || e.Code != "DataLoss" || e.Reason != "CORRUPTION" {
		t.Fatalf("dump --json error: %v %q", err, r.stderr)
	}
}

// Against a live node: TSSTORE_ADDR alone finds it, append needs its data,
// read streams with --timeout 0 (none) and flags after it, and --json
// prints 64-bit integers as numbers with snake_case keys.
func TestCLIAgainstANode(t *testing.T) {
	cfg := server.DefaultConfig()
	cfg.NodeID, cfg.DataDir, cfg.RaftAddr, cfg.APIAddr = "n1", t.TempDir(), freeAddr(t), freeAddr(t)
	cfg.Bootstrap = []server.Peer{{ID: "n1", RaftAddr: cfg.RaftAddr}}
	cfg.HeartbeatTimeout, cfg.ElectionTimeout, cfg.LeaderLeaseTimeout = 200*time.Millisecond, 200*time.Millisecond, 100*time.Millisecond
	n, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	env := []string{"TSSTORE_ADDR=" + n.APIAddr()}
	var r cliResult
	var st map[string]any
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		r = tsstoreCLI(t, env, "status", "--json")
		if err := json.Unmarshal([]byte(r.stdout), &st); err == nil && r.code == 0 && st["role"] == "leader" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no leader: exit %d, %q %q", r.code, r.stdout, r.stderr)
		}
	}
	for _, key := range []string{"commit_index", "next_offset", "term"} {
		if _, ok := st[key].(float64); !ok {
			t.Errorf("status --json: %s = %#v, want a number", key, st[key])
		}
	}
	for key := range st {
		if strings.ToLower(key) != key || strings.Contains(key, "-") {
			t.Errorf("status --json: key %q is not snake_case", key)
		}
	}
	r = tsstoreCLI(t, env, "append", "--stream", "s/1", "--type", "T", "--data", `{"x":1}`, "--json")
	var app map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &app); err != nil || r.code != 0 {
		t.Fatalf("append: exit %d, %v, %q %q", r.code, err, r.stdout, r.stderr)
	}
	if _, ok := app["first_offset"].(float64); !ok {
		t.Fatalf("append --json: first_offset is not a number: %s", r.stdout)
	}
	// A dead address in the list does not stop a read: some node answers.
	r = tsstoreCLI(t, []string{"TSSTORE_ADDR=" + deadAddr(t) + "," + n.APIAddr()}, "read", "--timeout", "0", "--json", "--from", "0")
	var ev eventJSON
	if err := json.Unmarshal([]byte(r.stdout), &ev); err != nil || r.code != 0 || ev.Payload != `{"x":1}` || ev.PayloadEncoding != "utf-8" || ev.Stream != "s/1" {
		t.Fatalf("read --timeout 0: exit %d, %v, %q %q", r.code, err, r.stdout, r.stderr)
	}
}

// The addresses client commands dial by default, and those in the SDK's
// package doc and examples, are the API ports `tsstore dev` listens on.
func TestDefaultAddressesAreTheDevAPIPorts(t *testing.T) {
	base, err := strconv.Atoi(newDevCmd().Flags().Lookup("base-port").DefValue)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for i := range 3 {
		want = append(want, fmt.Sprintf("127.0.0.1:%d", base+100+i)) // dev: node i's API port is base+100+i
	}
	if got := strings.Join(want, ","); got != devAddrs {
		t.Fatalf("devAddrs %s, want tsstore dev's API addresses %s", devAddrs, got)
	}
	for _, file := range []string{"../../client/doc.go", "../../client/example_test.go"} {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		calls := regexp.MustCompile(`DefaultConfig\(([^)]*)\)`).FindAllStringSubmatch(string(b), -1)
		if len(calls) == 0 {
			t.Fatalf("%s: no DefaultConfig call", file)
		}
		for _, c := range calls {
			if got := strings.ReplaceAll(strings.ReplaceAll(c[1], `"`, ""), " ", ""); got != devAddrs {
				t.Errorf("%s dials %s, want the dev API ports %s", file, got, devAddrs)
			}
		}
	}
}

// Replays and other commands whose work grows with the data have no
// deadline unless --timeout is given; the rest keep 10 s.
func TestCLITimeoutDefaults(t *testing.T) {
	root := newRootCmd()
	for path, want := range map[string]string{
		"read": "0s", "tail": "0s", "backup": "0s", "repair": "0s",
		"status": "10s", "append": "10s", "run verify": "10m0s",
	} {
		cmd, _, err := root.Find(strings.Fields(path))
		if err != nil {
			t.Fatal(err)
		}
		if got := cmd.Flags().Lookup("timeout").DefValue; got != want {
			t.Errorf("%s --timeout defaults to %s, want %s", path, got, want)
		}
	}
}

// Every JSON key the CLI prints is snake_case: the struct tags of its
// output types and of the types they embed from other packages.
func TestJSONKeysAreSnakeCase(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, "../../backup/backup.go", "../../fsm/snapstore.go", "../../server/raftverify.go",
		"../../segment/dump.go", "../../internal/version/version.go")
	tag := regexp.MustCompile("json:\"([^\"]*)\"")
	key := regexp.MustCompile(`^[a-z][a-z0-9_]*$`)
	n := 0
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range tag.FindAllStringSubmatch(string(b), -1) {
			name, _, _ := strings.Cut(m[1], ",")
			if name == "-" {
				continue
			}
			n++
			if !key.MatchString(name) {
				t.Errorf("%s: JSON key %q is not snake_case", f, name)
			}
		}
	}
	if n < 50 {
		t.Fatalf("found only %d JSON keys; the grep is broken", n)
	}
	// restore's peers were server.Peer, which has no tags (ID, RaftAddr).
	b, _ := json.Marshal(restoreResult{Peers: toPeersJSON([]server.Peer{{ID: "n1", RaftAddr: "h:1"}})})
	if !strings.Contains(string(b), `"peers":[{"id":"n1","raft_addr":"h:1"}]`) {
		t.Fatalf("restore --json: %s", b)
	}
}
