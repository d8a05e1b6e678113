package client

import (
	"testing"

	"github.com/tsstore/tsstore/internal/importrule"
)

// TestImportsStayClientSide enforces the layering: the SDK may use record/
// and proto/tsstorev1 but never the server side of tsstore. Its tests may
// use throwaway certificates (internal/testpki), and the examples
// (package client_test) the SDK itself.
func TestImportsStayClientSide(t *testing.T) {
	m := importrule.Module
	allowed := map[string]bool{m + "record": true, m + "proto/tsstorev1": true, m + "client/train": true}
	testOnly := map[string]bool{m + "internal/testpki": true, m + "client": true, m + "internal/importrule": true}
	importrule.Check(t, []string{"."}, "client/ may import only record, proto/tsstorev1 and client/train", func(file, path string) bool {
		return !importrule.Internal(path) || allowed[path] || importrule.IsTest(file) && testOnly[path]
	})
}
