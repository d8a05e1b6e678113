package segment

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestImportsStayBelow enforces the layering: segment/ imports only
// record/ of this module. In particular it knows nothing of tiering/:
// tiered segments read their objects through Options.Remote, which the
// server adapts to a tiering.Cache.
func TestImportsStayBelow(t *testing.T) {
	const module = "github.com/tsstore/tsstore/"
	files, err := filepath.Glob("*.go")
	if err != nil || len(files) == 0 {
		t.Fatalf("glob: %v (%d files)", err, len(files))
	}
	for _, name := range files {
		f, err := parser.ParseFile(token.NewFileSet(), name, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			if strings.HasPrefix(path, module) && path != module+"record" {
				t.Errorf("%s imports %s; segment/ imports only record/ of this module", name, path)
			}
		}
	}
}
