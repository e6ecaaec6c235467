package ops

import "golang.org/x/sys/windows"

// diskFree asks GetDiskFreeSpaceEx for the bytes available to this
// process's user (quotas included), as statfs's f_bavail on Unix.
func diskFree(dir string) (uint64, bool) {
	p, err := windows.UTF16PtrFromString(dir)
	if err != nil {
		return 0, false
	}
	var avail, total, free uint64
	if err := windows.GetDiskFreeSpaceEx(p, &avail, &total, &free); err != nil {
		return 0, false
	}
	return avail, true
}
