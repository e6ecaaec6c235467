// Package loadtest simulates many endpoints updating through one
// distribution point, for administrators sizing DPs: what `dpcache
// loadtest` runs.
//
// Each simulated endpoint opens its own connection to the DP (the DP sees
// one client per endpoint, as in a real site) and does what an endpoint's
// update does on the wire: GetLatest, GetManifest, ReadBlob of every blob
// it lacks, ReportStatus under an id of its own with the result
// "updated". It starts as if Config.From were installed: it reads only the
// blobs whose digest is not in that version's manifest (fetched once by
// Run, not per endpoint), so a run measures the realistic update, not a
// fresh install; without From every blob is read.
//
// Run reports the time each endpoint took from its start to its report
// (p50, p99), the time to its first answer (GetLatest, connection
// included), endpoints per minute, the bytes moved, failures by step and
// kind, and the memory of the DP process when it runs on this machine
// (NodePID; FindListener finds it from its listening address): the peak
// of RssAnon and VmRSS, sampled every 200 ms.
//
// # Cost per endpoint
//
// A simulated endpoint writes nothing to disk and holds no buffer of its
// own: blob bytes go from the transport's pooled buffers to io.Discard
// (or to SHA-256 with Config.Verify, off by default). Signed documents are
// verified and parsed once per distinct document, not per endpoint. What
// grows with Config.Concurrency is one gRPC connection per endpoint in
// flight (dial it lean, see source.Options.LeanConns); what grows with
// Config.Endpoints is two durations per endpoint.
//
// # Concurrency
//
// Run starts at most Config.Concurrency endpoints at once and returns when
// all have finished and its sampler has stopped. The Dialer is called from
// many goroutines at once.
//
// # Caveats
//
// With a client certificate, a DP that requires one (--client-ca) takes
// reports only under the certificate's name: set Config.ID, and every
// simulated endpoint reports under it (the DP's inventory then holds one
// endpoint). Process memory is read from /proc: on systems without it, or
// for a DP of another user, the figures are absent.
package loadtest
