// Package node is a distribution point (DP): it serves the repository's
// signed documents and blobs to endpoints and peers over gRPC from a bbolt
// cache, and resolves a miss from its upstream sources, tried in order.
//
// # Serving
//
// Signed documents are relayed byte for byte; nothing trusts a DP, so
// callers verify them again. A blob is served from the cache when whole;
// otherwise one fetch per digest runs in the background and every request
// for that blob streams the bytes already stored, then waits for more, so
// the upstream link carries each blob once however many endpoints ask at
// once. A blob is never recorded whole unless its SHA-256 matches; a stream
// whose blob fails verification ends with DataLoss. A DP fetches only blobs
// named by a verified manifest: it is not an open proxy.
//
// # Versions
//
// A DP's latest for a product is the newest version it holds whole. Every
// Config.Refresh it asks upstream for a newer latest, fetches that version
// whole in the background, and only then announces it, so an endpoint never
// starts an update the LAN cannot finish. A cold DP that holds no version of
// a product passes upstream's latest through and pulls the blobs as they are
// asked for. A lower serial from upstream is ignored (a rollback attack).
//
// # Caveats
//
// Bytes of a blob still being fetched are streamed before the blob is
// verified; a caller must check the SHA-256 itself (the agent does) and
// treat DataLoss as "retry". Chunk buffers queued for sending are bounded by
// Config.ServeMemory across all streams.
package node
