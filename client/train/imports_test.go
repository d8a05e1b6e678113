package train

import (
	"strings"
	"testing"

	"github.com/tsstore/tsstore/internal/importrule"
)

// TestLeafImports keeps the package a leaf: the standard library and
// msgpack only, so the server and the client SDK can both import it.
func TestLeafImports(t *testing.T) {
	importrule.Check(t, []string{"."}, "client/train may import only the standard library and msgpack", func(file, path string) bool {
		first, _, _ := strings.Cut(path, "/")
		msgpack := path == "github.com/vmihailenco/msgpack/v5" || strings.HasPrefix(path, "github.com/vmihailenco/msgpack/v5/")
		test := importrule.IsTest(file) && (path == importrule.Module+"client/train" || path == importrule.Module+"internal/importrule")
		return !strings.Contains(first, ".") || msgpack || test
	})
}
