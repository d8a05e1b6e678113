package pgsource

import (
	"testing"

	"github.com/tsstore/tsstore/internal/importrule"
)

// TestImportsStayOnTheSDK enforces the layering of cdc/: the connector and
// the sink are clients of tsstore, built on the SDK alone; only their tests
// start servers (internal/storetest).
func TestImportsStayOnTheSDK(t *testing.T) {
	m := importrule.Module
	allowed := map[string]bool{m + "client": true, m + "client/train": true}
	importrule.Check(t, []string{".", "../pgsink"}, "cdc/ may import only client and client/train", func(file, path string) bool {
		return importrule.IsTest(file) || !importrule.Internal(path) || allowed[path]
	})
}
