//go:build unix

package ops

import "syscall"

// DiskFree returns the bytes available to unprivileged users on dir's file
// system; false when it cannot be read. It asks the kernel each time (one
// statfs).
func DiskFree(dir string) (uint64, bool) {
	var fs syscall.Statfs_t
	if err := syscall.Statfs(dir, &fs); err != nil {
		return 0, false
	}
	return fs.Bavail * uint64(fs.Bsize), true
}
