package importrule

import (
	"testing"
)

// recorder is a testing.TB that keeps the errors Check reports.
type recorder struct {
	testing.TB
	errs []string
}

func (r *recorder) Errorf(format string, args ...any) { r.errs = append(r.errs, format) }
func (r *recorder) Helper()                           {}

// Check reports an import the rule refuses and stays quiet for one it
// allows: this package's own test file imports "testing".
func TestCheck(t *testing.T) {
	r := &recorder{TB: t}
	Check(r, []string{"."}, "no testing", func(_, path string) bool { return path != "testing" })
	if len(r.errs) == 0 {
		t.Fatal("an import the rule refuses was not reported")
	}
	r.errs = nil
	Check(r, []string{"."}, "anything", func(string, string) bool { return true })
	if len(r.errs) != 0 {
		t.Fatalf("reported %d imports a rule allowing all accepts", len(r.errs))
	}
}
