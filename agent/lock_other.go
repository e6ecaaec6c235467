//go:build !unix && !windows

package agent

// lockFile is a no-op where flock(2) is not available: concurrent runs on
// one directory are not detected there.
func lockFile(path string) (unlock func(), err error) { return func() {}, nil }
