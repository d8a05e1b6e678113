//go:build !unix

package freeport

import "os"

// tryLock claims no slot where there is no flock: ports come from the
// whole range.
func tryLock(*os.File) bool { return false }
