package client

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestImportsStayClientSide enforces the layering: the SDK may use record/
// and proto/tsstorev1 but never the server side of tsstore.
func TestImportsStayClientSide(t *testing.T) {
	const module = "github.com/tsstore/tsstore/"
	allowed := map[string]bool{module + "record": true, module + "proto/tsstorev1": true, module + "client/train": true}
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
			if strings.HasSuffix(name, "_test.go") && path == module+"internal/testpki" {
				continue // throwaway certificates for tests
			}
			if strings.HasSuffix(name, "_test.go") && path == module+"client" {
				continue // the examples (package client_test) use the SDK itself
			}
			if strings.HasPrefix(path, module) && !allowed[path] {
				t.Errorf("%s imports %s; client/ may import only record, proto/tsstorev1 and client/train", name, path)
			}
		}
	}
}
