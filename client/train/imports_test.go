package train

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestLeafImports keeps the package a leaf: the standard library and
// msgpack only, so the server and the client SDK can both import it.
func TestLeafImports(t *testing.T) {
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
			first, _, _ := strings.Cut(path, "/")
			msgpack := path == "github.com/vmihailenco/msgpack/v5" || strings.HasPrefix(path, "github.com/vmihailenco/msgpack/v5/")
			self := path == "github.com/tsstore/tsstore/client/train" && strings.HasSuffix(name, "_test.go")
			if strings.Contains(first, ".") && !msgpack && !self {
				t.Errorf("%s imports %s; client/train may import only the standard library and msgpack", name, path)
			}
		}
	}
}
