// Package fetch resolves a distribution point's blob misses and streams
// blobs to readers. A Fetcher runs one fetch per digest at a time in the
// background (every request for a blob in flight joins it), tries the
// candidates a Router lists in order (peers of the site holding the blob,
// its owners, the site's other fetchers, then upstream) and resumes a broken
// transfer at the byte already stored (failover.go: runFetch, copyFrom,
// copyStream). Readers stream what is whole from the cache, else the fetch's
// bytes as they arrive: stored chunks, then the bytes not stored yet, from
// the cache writer's memory (its write-behind queue: the disk may lag the
// network without slowing readers). It fetches only blobs that Sizes knows (a verified manifest names
// them): it is not an open proxy. The one exception is Replicate, the copy
// of a blob that the site's owner is fetching (in-flight replication), at
// the size the owner announced; its bytes are verified all the same. An
// owner keeps its lead on the DPs streaming its fetch within peerLead (2%
// of the blob, 1–4 MiB), so losing it mid-fetch costs the site little.
//
// A chunked file, which the repository stores only as chunks, is read whole
// by assembling its chunks (assemble.go: ReadFile, FileReader): each chunk
// is ensured like any blob, a few ahead of the reader, and the assembled
// file is never stored.
//
// It consumes small interfaces it declares: Store (the cache), Sizes,
// Router, Pins (retention's reader pins) and Metrics.
//
// # Concurrency
//
// Every exported method is safe for concurrent use. Fetcher.mu protects the
// map of fetches in flight and the closed flag; it is never held while
// calling Sizes, Router or Pins (those have locks of their own). Each fetch's
// own mu protects its progress (bytes stored and received, the cache
// writer holding the bytes not stored yet, the peers streaming it). The byte counters are atomics. Chunk
// buffers queued for sending are bounded by Config.ServeMemory across all
// streams (pool.go).
//
// # Caveats
//
// Bytes of a blob still being fetched are streamed before the blob is
// verified; a caller must check the SHA-256 itself and treat DataLoss as
// "retry".
package fetch
