package ops

// LowDiskThreshold is the free space under the data directory below which a
// DP warns (dpcache_disk_low, the status page's banner, the log), as
// Kaspersky's distribution points do.
const LowDiskThreshold = 2 << 30

// DiskFree returns the bytes available to unprivileged users on dir's file
// system; false when it cannot be read. It asks the kernel each time
// (statfs on Unix, GetDiskFreeSpaceEx on Windows: disk_unix.go,
// disk_windows.go).
func DiskFree(dir string) (uint64, bool) {
	return diskFree(dir)
}
