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
// A chunked file (a manifest entry with chunks) is in the repository only
// as its chunks; a read of its whole digest, over gRPC or /repo/, is served
// assembled from them (chunked.go): each chunk fetched once and verified
// like any blob, a few ahead of the reader, the assembled file never
// stored, and a read from the first byte hashed and cut before its end if
// the chunks do not make the file the manifest names.
//
// # Parent DPs and loops
//
// An upstream may be another DP (grpc://, grpcs://). Every request a DP
// sends to a DP carries the chain of DP instances it came through (a
// random id per process: names repeat across sites), and the fetches a
// request starts or shares carry it too. A DP that finds itself in the
// chain of a request, or a chain of more than 8 DPs, refuses it at once
// with FailedPrecondition ("upstream loop ... check the --upstream
// lists"), so DPs that list each other as upstreams fail over to their
// next upstream instead of waiting on themselves until a timeout.
//
// # Versions
//
// A DP's latest for a product is the newest version it holds whole. Every
// Config.Refresh (plus a random 0-10%) it asks upstream for a newer latest
// of every product it keeps, fetches that version whole in the background,
// and only then announces it, so an endpoint never starts an update the LAN
// cannot finish. A cold DP that holds no version of a product passes
// upstream's latest through and pulls the blobs as they are asked for. A
// lower serial from upstream is ignored (a rollback attack).
//
// # Download task
//
// The products of Config.Products are kept current before any endpoint
// asks: at start (once the DP has joined its cluster) and at every refresh,
// the DP checks upstream and completes a newer version; the site's DPs
// share the work by blob ownership, so the site fetches each blob once.
// Config.UpstreamWindow confines when the task fetches (a version found
// outside it is fetched at its start); products endpoints asked for are
// fetched at once whatever the window. Config.UpstreamRate bounds the
// bytes the task reads from upstream (not what endpoints or prefetch wait
// for), and databases are fetched before modules.
// AdminService.Prefetch runs the task now and streams its progress.
// Config.PrefetchInterval, deprecated, gives Config.Products an interval
// of their own.
//
// # Quota and retention
//
// After a version becomes whole (and at start, and every minute) the DP
// keeps the newest Config.KeepVersions versions of each product, deletes
// the blobs no kept version references, and while the cache's own bytes
// exceed Config.CacheMax evicts the oldest versions that are not their
// product's latest. It never drops the latest version of a product nor a
// blob being streamed; bbolt reuses the freed pages. It logs a warning
// while less than 2 GiB are free under the data directory.
//
// # Endpoints
//
// Endpoints report what they installed (ReportStatus); ListEndpoints gives
// the reports of the DP's whole site with an age bucket (current, 24h, 3d,
// 7d: how far the installed version's publication is behind the newest's;
// see AgeBucket).
//
// # Operations
//
// The HTTP listener (Config.HTTPAddr) serves a status page at / (members by
// site, versions held, cache use, the internet bytes saved with a chart of
// the last hours, outdated endpoints, a low-disk warning), Prometheus
// metrics named dpcache_<subsystem>_<name>_<unit> at /metrics (on
// Config.Registry, a registry of the DP's own by default), /healthz and
// /readyz (503 until Run serves and while it stops). Most figures are read
// when scraped; the serving path only adds to a few atomics.
//
// # Gossip keys
//
// With Config.GossipKeyFile, gossip is encrypted with the file's keys (the
// first encrypts, every one decrypts). The file is re-read when it changes
// and on Node.Reload (SIGHUP on the command line), so a key is rotated
// without a restart; a file that cannot be used keeps the keys in use and
// logs an error. Logs name keys by fingerprint only.
//
// # Layout
//
// This package is the DP's edge: New, Run, Close, Config, the gRPC and HTTP
// handlers (which alone turn errors into status codes), gossip and the
// peer connections. Each concern lives in a package of its own under
// node/internal, with its own lock, consuming small interfaces it declares
// (the *View adapters here implement them):
//
//	internal/fetch    one fetch per blob, its failover loop, streaming to readers, serve buffers
//	internal/catalog  blob sizes, versions, refresh, upstream latest, download task, watches
//	internal/retain   quota, keep-versions, reader pins
//	internal/ops      metrics, status page, free disk space
//	internal/nodeerr  the sentinel errors node exports
//
// Imports point one way: node → internal packages; none imports node.
// node/adminclient is the AdminService client the command line shares.
// The DP's bbolt records (manifests, publication times, endpoint reports)
// are typed methods of package cache.
//
// # Concurrency
//
// Node.mu protects only the closed flag; the state of each concern is
// under its package's lock, and peerPool.mu protects the peer connections.
// Lock order where packages call each other under a lock: retain's pins,
// then the fetcher's or the catalogue's lock (see package retain).
//
// # Caveats
//
// Bytes of a blob still being fetched are streamed before the blob is
// verified; a caller must check the SHA-256 itself (the agent does) and
// treat DataLoss as "retry". Chunk buffers queued for sending are bounded by
// Config.ServeMemory across all streams.
package node
