package systemtest

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// maxExposure is the highest `systemd-analyze security` exposure level
// accepted for deploy/systemd/tsstore.service (0 = fully locked down, 10 =
// unprotected; systemd calls <= 2.9 "OK"). The unit scores 1.2; what is
// left is network access, which tsstore needs, and the site-specific IP
// allow list (docs/deploy.md). 2.0 leaves room for that, not for dropping
// a sandboxing option.
const maxExposure = 2.0

// systemdAnalyze finds systemd-analyze. Its absence fails the test unless
// TSSTORE_NO_SYSTEMD=1 says the host has no systemd on purpose.
func systemdAnalyze(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("TSSTORE_NO_SYSTEMD") == "1" {
			t.Skip("SKIPPING the systemd unit checks: systemd-analyze not found and TSSTORE_NO_SYSTEMD=1")
		}
		t.Fatalf("systemd-analyze not found: deploy/systemd/tsstore.service is NOT verified. " +
			"Install systemd (apt-get install systemd; scripts/test.sh does), or set TSSTORE_NO_SYSTEMD=1 to skip")
	}
	return bin
}

// The shipped unit passes `systemd-analyze verify` and its sandbox scores
// at most maxExposure. systemd is not PID 1 in a test container, so both
// run offline on a copy whose ExecStart names the freshly built binary
// (verify insists that the program exists); --man=false skips checking the
// Documentation= pages. The tsstore user need not exist for either.
func TestSystemdUnit(t *testing.T) {
	sa := systemdAnalyze(t)
	unit, err := os.ReadFile(filepath.Join(moduleRoot(), "deploy", "systemd", "tsstore.service"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{
		"ExecStart=/usr/local/bin/tsstore serve --config /etc/tsstore/tsstore.toml\n",
		// Fail safe (issue #15): check the config first, never retry a
		// configuration error, never wait for ever to start.
		"ExecStartPre=/usr/local/bin/tsstore serve --config /etc/tsstore/tsstore.toml --check-config\n",
		"RestartPreventExitStatus=78\n",
		"TimeoutStartSec=90s\n",
		"WatchdogSec=30s\n",
	} {
		if !strings.Contains(string(unit), line) {
			t.Errorf("unit lacks %q", strings.TrimSpace(line))
		}
	}
	path := filepath.Join(t.TempDir(), "tsstore.service")
	text := strings.ReplaceAll(string(unit), "=/usr/local/bin/tsstore ", "="+binary(t)+" ")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}

	out, err := exec.Command(sa, "verify", "--man=false", path).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}

	out, err = exec.Command(sa, "security", "--no-pager", "--offline=true", path).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`Overall exposure level for tsstore\.service: ([0-9.]+) (\S+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no overall exposure level in:\n%s", out)
	}
	score, _ := strconv.ParseFloat(string(m[1]), 64)
	t.Logf("systemd-analyze security: exposure %.1f %s (limit %.1f)", score, m[2], maxExposure)
	if score > maxExposure {
		t.Fatalf("exposure %.1f above %.1f; a sandboxing option was dropped?\n%s", score, maxExposure, out)
	}

	// The sample config is valid for the binary.
	cfg := filepath.Join(moduleRoot(), "deploy", "systemd", "tsstore.toml")
	if out, err := exec.Command(binary(t), "serve", "--check-config", "--config", cfg).CombinedOutput(); err != nil {
		t.Fatalf("tsstore serve --check-config %s: %v\n%s", cfg, err, out)
	}
	// A config error exits 78, which RestartPreventExitStatus= lists: in
	// ExecStartPre (--check-config) and in ExecStart alike.
	bad := filepath.Join(t.TempDir(), "bad.toml")
	if err := os.WriteFile(bad, []byte("id = \"n1\"\nheartbeat_timout = \"1s\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"serve", "--config", bad, "--check-config"}, {"serve", "--config", bad}} {
		out, err := exec.Command(binary(t), args...).CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 78 || !strings.Contains(string(out), "unknown keys heartbeat_timout") {
			t.Errorf("tsstore %s: %v, want exit 78\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// The backup service and its timer pass `systemd-analyze verify`, and the
// service is sandboxed as tightly as the node's.
func TestSystemdBackupUnits(t *testing.T) {
	sa := systemdAnalyze(t)
	dir := t.TempDir()
	var paths []string
	for _, name := range []string{"tsstore-backup.service", "tsstore-backup.timer"} {
		unit, err := os.ReadFile(filepath.Join(moduleRoot(), "deploy", "systemd", name))
		if err != nil {
			t.Fatal(err)
		}
		text := strings.ReplaceAll(string(unit), "/usr/local/bin/tsstore ", binary(t)+" ")
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	out, err := exec.Command(sa, append([]string{"verify", "--man=false"}, paths...)...).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	out, err = exec.Command(sa, "security", "--no-pager", "--offline=true", paths[0]).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`Overall exposure level for tsstore-backup\.service: ([0-9.]+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no overall exposure level in:\n%s", out)
	}
	if score, _ := strconv.ParseFloat(string(m[1]), 64); score > maxExposure {
		t.Fatalf("backup service exposure %.1f above %.1f\n%s", score, maxExposure, out)
	}
}

// The CDC connector's and the sink's units pass `systemd-analyze verify`
// (with the example configs, which their --check-config accepts) and are
// sandboxed as tightly as the node's.
func TestSystemdCDCUnits(t *testing.T) {
	sa := systemdAnalyze(t)
	dir := t.TempDir()
	for _, u := range []struct{ unit, config string }{
		{"tsstore-cdc-postgres.service", "cdc-postgres.toml"},
		{"tsstore-sink-postgres.service", "sink-postgres.toml"},
	} {
		unit, err := os.ReadFile(filepath.Join(moduleRoot(), "deploy", "systemd", u.unit))
		if err != nil {
			t.Fatal(err)
		}
		config := filepath.Join(moduleRoot(), "deploy", "systemd", u.config)
		text := strings.ReplaceAll(string(unit), "/usr/local/bin/tsstore ", binary(t)+" ")
		text = strings.ReplaceAll(text, "/etc/tsstore/"+u.config, config)
		p := filepath.Join(dir, u.unit)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(sa, "verify", "--man=false", p).CombinedOutput()
		if err != nil || len(strings.TrimSpace(string(out))) > 0 {
			t.Errorf("systemd-analyze verify %s: %v\n%s", u.unit, err, out)
		}
		out, err = exec.Command(sa, "security", "--no-pager", "--offline=true", p).CombinedOutput()
		if err != nil {
			t.Fatalf("systemd-analyze security %s: %v\n%s", u.unit, err, out)
		}
		m := regexp.MustCompile(`Overall exposure level for ` + regexp.QuoteMeta(u.unit) + `: ([0-9.]+)`).FindSubmatch(out)
		if m == nil {
			t.Fatalf("no overall exposure level in:\n%s", out)
		}
		if score, _ := strconv.ParseFloat(string(m[1]), 64); score > maxExposure {
			t.Errorf("%s exposure %.1f above %.1f\n%s", u.unit, score, maxExposure, out)
		}
		// The ExecStartPre check accepts the example config.
		cmd := strings.Fields(regexp.MustCompile(`(?m)^ExecStartPre=(.*)$`).FindStringSubmatch(text)[1])
		if out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput(); err != nil {
			t.Errorf("%s: %v\n%s", strings.Join(cmd, " "), err, out)
		}
	}
}
