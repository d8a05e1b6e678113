package segment

import (
	"testing"

	"github.com/tsstore/tsstore/internal/importrule"
)

// TestImportsStayBelow enforces the layering: segment/ imports only
// record/ of this module. In particular it knows nothing of tiering/:
// tiered segments read their objects through Options.Remote, which the
// server adapts to a tiering.Cache.
func TestImportsStayBelow(t *testing.T) {
	importrule.Check(t, []string{"."}, "segment/ imports only record/ of this module", func(file, path string) bool {
		return !importrule.Internal(path) || path == importrule.Module+"record" ||
			importrule.IsTest(file) && path == importrule.Module+"internal/importrule"
	})
}
