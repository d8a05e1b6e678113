package tiering

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestImportsStayBelow enforces the layering: tiering/ sits beside
// segment/ and imports no tsstore package (what to upload and when is the
// caller's).
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
			if strings.HasSuffix(name, "_test.go") && path == module+"internal/s3test" {
				continue // the real S3 server of the tests
			}
			if strings.HasPrefix(path, module) {
				t.Errorf("%s imports %s; tiering/ imports no tsstore package", name, path)
			}
		}
	}
}
