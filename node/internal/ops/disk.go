package ops

// LowDiskThreshold is the free space under the data directory below which a
// DP warns (dpcache_disk_low, the status page's banner, the log), as
// Kaspersky's distribution points do.
const LowDiskThreshold = 2 << 30
