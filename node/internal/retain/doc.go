// Package retain is a distribution point's quota and retention: it looks
// after the DP's own disk, and pins the blobs being read so that nothing is
// deleted under a reader.
//
// A retention pass (Retainer.Pass) runs at start, after each version
// becomes whole, before a version is fetched when Config.CacheMax is set
// (to make room for it), when a blob it had to skip is no longer read, and
// every maintenanceInterval. It
//
//  1. drops the versions of each product beyond the newest
//     Config.KeepVersions;
//  2. deletes the whole blobs no recorded version references (those of the
//     dropped versions, blobs pulled through for an old version), oldest
//     first;
//  3. while the cache's own bytes (whole and partial blobs, plus what the
//     versions being fetched still need) exceed Config.CacheMax, drops the
//     oldest version that is not its product's latest, with its blobs;
//     then, as a last resort, partial blobs no fetch is writing.
//
// It never drops the latest version of a product, never deletes a blob
// being read or fetched right now (it skips it and retries once the last
// reader is done), and never deletes a blob that a version newer than its
// product's latest names (one being fetched, or pulled through for a cold
// site). Deleted pages go to bbolt's freelist and are reused: the file
// stops growing once the quota is reached. The documents of versions
// older than the oldest kept are deleted too; their publication times are
// kept (small records) so endpoint ages stay known.
//
// Retainer.Run also checks the free space under the data directory every
// maintenanceInterval and logs a warning while it is low.
//
// # Concurrency
//
// Retainer.mu serialises passes and protects overQuota; Pins.mu protects
// the readers, the blobs being deleted and the blobs waiting for their last
// reader. A pass asks DP.Fetching and DP.Protected with Pins.mu held, so the
// DP must take no Pins method under its own locks (lock order: Pins, then
// the DP's). Every exported method is safe for concurrent use.
package retain
