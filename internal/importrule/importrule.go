// Package importrule checks a package's imports against its layer's rule
// (STYLE.md: lower packages never import higher ones), for the tests that
// keep each layer honest: a test of segment/ says what segment/ may
// import, and Check reads every file of the folder and reports the rest.
package importrule

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// Module is this repository's module path, with a trailing slash.
const Module = "github.com/tsstore/tsstore/"

// Check parses the imports of every .go file (tests included) in each
// folder of dirs and reports, as a test error naming rule, each import
// path that allowed refuses. allowed gets the file's name and the import
// path. A folder without Go files fails the test: the rule would check
// nothing.
func Check(t testing.TB, dirs []string, rule string, allowed func(file, path string) bool) {
	t.Helper()
	for _, dir := range dirs {
		files, err := filepath.Glob(filepath.Join(dir, "*.go"))
		if err != nil || len(files) == 0 {
			t.Fatalf("glob %s: %v (%d files)", dir, err, len(files))
		}
		for _, name := range files {
			f, err := parser.ParseFile(token.NewFileSet(), name, nil, parser.ImportsOnly)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			for _, imp := range f.Imports {
				path, _ := strconv.Unquote(imp.Path.Value)
				if !allowed(name, path) {
					t.Errorf("%s imports %s; %s", name, path, rule)
				}
			}
		}
	}
}

// Internal reports whether path is a package of this module.
func Internal(path string) bool { return strings.HasPrefix(path, Module) }

// IsTest reports whether file is a test file.
func IsTest(file string) bool { return strings.HasSuffix(file, "_test.go") }
