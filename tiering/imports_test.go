package tiering

import (
	"testing"

	"github.com/tsstore/tsstore/internal/importrule"
)

// TestImportsStayBelow enforces the layering: tiering/ sits beside
// segment/ and imports no tsstore package (what to upload and when is the
// caller's). Its tests use the real S3 server of internal/s3test.
func TestImportsStayBelow(t *testing.T) {
	importrule.Check(t, []string{"."}, "tiering/ imports no tsstore package", func(file, path string) bool {
		test := importrule.IsTest(file) && (path == importrule.Module+"internal/s3test" || path == importrule.Module+"internal/importrule")
		return !importrule.Internal(path) || test
	})
}
