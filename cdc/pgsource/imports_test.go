package pgsource

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestImportsStayOnTheSDK enforces the layering of cdc/: the connector and
// the sink are clients of tsstore, built on the SDK alone; only their tests
// start servers (internal/storetest).
func TestImportsStayOnTheSDK(t *testing.T) {
	const module = "github.com/tsstore/tsstore/"
	allowed := map[string]bool{module + "client": true, module + "client/train": true}
	for _, dir := range []string{".", "../pgsink"} {
		files, err := filepath.Glob(filepath.Join(dir, "*.go"))
		if err != nil || len(files) == 0 {
			t.Fatalf("glob %s: %v (%d files)", dir, err, len(files))
		}
		for _, name := range files {
			if strings.HasSuffix(name, "_test.go") {
				continue
			}
			f, err := parser.ParseFile(token.NewFileSet(), name, nil, parser.ImportsOnly)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			for _, imp := range f.Imports {
				path, _ := strconv.Unquote(imp.Path.Value)
				if strings.HasPrefix(path, module) && !allowed[path] {
					t.Errorf("%s imports %s; cdc/ may import only client and client/train", name, path)
				}
			}
		}
	}
}
