package ops

import "golang.org/x/sys/windows"

// DiskFree returns the bytes available to the calling user on dir's volume
// (quotas included); false when it cannot be read. It asks Windows each
// time (one GetDiskFreeSpaceEx).
func DiskFree(dir string) (uint64, bool) {
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
