//go:build !unix && !windows

package ops

// DiskFree cannot read the free space here: false.
func DiskFree(dir string) (uint64, bool) { return 0, false }
