// Package version reports which build of tsstore is running: the module
// version and the VCS revision that runtime/debug.ReadBuildInfo records.
// The CLI prints it (`tsstore version`); a server can put it in Status,
// a build-info metric and its first log line.
//
// It has no dependencies beyond the standard library, so any package may
// import it.
package version

import (
	"runtime"
	"runtime/debug"
	"strings"
)

// BuildInfo is what the binary knows of its own build. Fields the build did not
// record are empty (a test binary, or `go build` outside a VCS checkout).
type BuildInfo struct {
	// Version is the main module's version: a tag like v1.2.3, a
	// pseudo-version, or "(devel)" for a build from a working tree.
	Version string `json:"version"`
	// Revision is the VCS commit (vcs.revision), Time its commit time
	// (vcs.time, RFC 3339), Modified whether the tree had local changes.
	Revision string `json:"revision"`
	Time     string `json:"time"`
	Modified bool   `json:"modified"`
	// GoVersion is the toolchain that built the binary.
	GoVersion string `json:"go_version"`
}

// Info reads the build information of the running binary; it is cheap.
func Info() BuildInfo {
	i := BuildInfo{Version: "(unknown)", GoVersion: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return i
	}
	if bi.Main.Version != "" {
		i.Version = bi.Main.Version
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			i.Revision = s.Value
		case "vcs.time":
			i.Time = s.Value
		case "vcs.modified":
			i.Modified = s.Value == "true"
		}
	}
	return i
}

// String is one line: "v1.2.3 (rev 0cd0c65a1b2c, modified, go1.26.0)".
func (i BuildInfo) String() string {
	var parts []string
	if i.Revision != "" {
		rev := i.Revision
		if len(rev) > 12 {
			rev = rev[:12]
		}
		parts = append(parts, "rev "+rev)
	}
	if i.Modified {
		parts = append(parts, "modified")
	}
	parts = append(parts, i.GoVersion)
	return i.Version + " (" + strings.Join(parts, ", ") + ")"
}

// String is Info().String(), for logs and `tsstore version`.
func String() string { return Info().String() }
