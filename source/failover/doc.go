// Package failover is dpcache's one failover engine: Chain tries update
// sources in the order an administrator listed them, as Kaspersky Endpoint
// Security tries its update sources, for documents (verified by a hook the
// caller supplies: signature, product, serial floor, expiry) and for blobs
// (read as a stream, or stored into the caller's Sink, which verifies the
// whole). Every user of ordered sources goes through it: the agent's
// update and mirror, and the distribution point's documents and blob
// fetches (peers, the blob's owner, then upstream).
//
// What it guarantees, for every kind of source (http, https, ftp, file,
// grpc):
//   - a connect timeout on each request, and a stall timeout while bytes
//     flow: a silent source is left for the next, which resumes at the
//     offset reached;
//   - a transfer that breaks after progress resumes at its offset from the
//     same source (up to MaxResumes times in a row), then from the next;
//   - corrupt bytes (more than the size, a digest that does not match) are
//     discarded and the blob is fetched again from byte 0 from the next
//     source;
//   - a source that failed is remembered (Health, shareable between
//     chains) and tried after the others until its backoff ends;
//   - when no source serves, a *Error lists every source and why, and
//     errors.Is says whether everything was "not found".
//
// # Concurrency
//
// A Chain and a Health are safe for concurrent use; the reader Blob
// returns, and Fetch's calls to a Sink, belong to one goroutine.
package failover
