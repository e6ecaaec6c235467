// Package cache is a distribution point's store: blobs (a version's files,
// named by their SHA-256), the signed documents that describe versions, the
// index of versions held whole, and opaque records (endpoint reports), all in
// one bbolt file.
//
// # Blobs
//
// A blob is ingested by a [Writer] ([Cache.NewWriter]): Write buffers the
// bytes as they arrive, in batches of Config.FlushSize; full batches queue
// (up to Config.WriteBehind) for a goroutine that stores them in chunks of
// Config.ChunkSize, all that is queued in one bbolt transaction, while
// another hashes them, behind the caller. Until stored, they are read from
// memory ([Writer.ReadBufferedAt]). Commit
// checks the size and that the SHA-256 of every byte equals the digest, and
// only then makes the blob visible, in one transaction that flips its meta
// record from pending to whole. Until then
// the blob is pending: [Cache.Stat] and [Cache.ReadAt] do not see it, and
// [Cache.ReadPendingAt] serves the chunks stored so far to readers that want
// the bytes while the fetch runs (they are not verified yet). A blob that
// fails its digest check is deleted.
//
// An ingest interrupted by [Writer.Abort], a lost connection or a crash
// leaves a pending blob; [Cache.NewWriter] with the same digest resumes it at
// [Writer.Offset], after re-reading and re-hashing the stored bytes (so the
// digest check at Commit covers what is on disk, not what was once received).
//
// The layout, in top-level buckets:
//
//	blobs     raw digest (32 bytes) -> meta: state, size, bytes stored, chunk size, times
//	chunks    raw digest + uint32 big-endian chunk index -> chunk bytes
//	docs      repository path -> document and signature, verbatim
//	versions  product (bucket) / big-endian serial + version name -> JSON Version
//	records   name (bucket) / key -> value (the DP's own records have typed methods: noderecords.go)
//	state     "open" -> set while a session is open (to detect a crash)
//
// # Concurrency
//
// Every Cache method is safe for concurrent use. Reads run in short read
// transactions (one per call; bytes are copied out before it ends) and never
// wait for writers. Write transactions are serialized: bbolt allows one at a
// time. One [Writer] per digest may exist at a time ([ErrBusy] otherwise); a
// Writer's Write, Commit, Abort and Discard belong to one goroutine, while
// its Offset, Flushed and Progress may be called from any goroutine. A Writer
// hashes and stores its queue in two background goroutines while the caller
// writes on (they stop when the queue is empty); Commit, Abort and Discard
// wait for them, so nothing runs once a Writer is finished. The Cache itself starts no goroutine.
//
// # Durability
//
// Every transaction except the ones that store chunks during an ingest is
// synced (bbolt's fdatasync before and after its meta page). With
// Config.NoSync set, the chunk transactions skip fdatasync; Commit then syncs
// the file before the transaction that makes the blob whole, and that
// transaction is synced itself, so once Commit returns the blob and all its
// chunks are on disk. With NoSync unset (the default) every transaction is
// synced; large batches keep that cheap (see the benchmarks in
// bench_test.go).
//
// A killed process (kill -9, OOM, panic) loses at most the bytes not
// stored yet (the write-behind queue and the batch being filled): bbolt commits are atomic, the kernel keeps every page already
// written, the next Open sees the last committed state, pending blobs stay
// pending (never visible), and whole blobs stay whole.
//
// # Caveats
//
// NoSync is safe against a killed process but not against a power loss or a
// kernel crash. A NoSync commit may reach the disk in any order, its meta page
// before its data pages, and it may reuse pages that the last synced state
// still references (bbolt copies a leaf on write and frees the old page, which
// may hold chunks of whole blobs next to the one being ingested). A power loss
// before the next sync can then leave the file damaged, whole blobs included.
// So when a session that used NoSync did not Close, Open runs bbolt's
// consistency check (Config.CheckAfterCrash) and fails with [ErrCorrupt] on
// damage; the check catches broken structure, not a value overwritten in
// place, so after a power loss also run [Cache.Verify] over the blobs, or
// delete the file: it only holds cached data. Leave NoSync off where power
// losses happen.
//
// The SHA-256 is checked when a blob is written (and at resume, over the bytes
// on disk), not when it is read: bit rot after Commit goes unnoticed until
// [Cache.Verify] re-hashes the blob. Endpoints verify every blob anyway.
//
// Memory: an active Writer holds the batch being filled, the batches queued
// for storing (Config.WriteBehind) and one spare: at most WriteBehind + 2 x
// Config.FlushSize, 32 MiB by default, and the transaction storing the queue
// copies it once more into bbolt's pages (one transaction at a time). Small
// blobs cost only their size.
//
// Every transaction that stores chunks rewrites the last leaf of the chunks
// bucket it touches, and bbolt keeps at least two values per leaf: two to four
// chunks already stored are copied again per transaction. Small chunks and
// batches of many (Config.ChunkSize and Config.FlushSize: 32 chunks of
// 256 KiB by default) keep that under 10%.
//
// A read transaction that outlives the mapping's size blocks a writer that
// must grow the file; ReadAt holds one only while it copies len(p) bytes, so
// keep p to a few MiB. Config.InitialMmapSize maps ahead to make growth rare.
// ReadAt and ReadPendingAt copy with pread from the file, at the offsets of
// the values bbolt finds in its mapping, rather than out of the mapping: on
// a virtual machine that costs a fraction of the page-table work (pread.go).
//
// The file never shrinks: bbolt reuses the pages of deleted blobs but does not
// truncate (compact it offline with `bbolt compact` to give space back).
// Only one process can open the file at a time (bbolt takes a lock); Open
// gives up after Config.OpenTimeout.
package cache
