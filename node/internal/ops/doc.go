// Package ops is what an operator of a distribution point sees: its
// Prometheus metrics (Metrics, named dpcache_<subsystem>_<name>_<unit>),
// the HTML status page with the cluster's traffic history (StatusPage), and
// the free disk space of the data directory (DiskFree).
//
// It reads the DP's state through small interfaces it declares (Stats,
// State, Cluster), mostly when /metrics is scraped or the page is asked
// for; the serving path only adds to a few atomics (Metrics.CacheRequest,
// Metrics.UpstreamBytes, Metrics.Evicted).
//
// # Concurrency
//
// Every exported method is safe for concurrent use. StatusPage.mu protects
// the traffic history (last counters per member, totals, samples); Metrics
// holds no lock: its counters are atomics and Prometheus vectors. A nil
// *Metrics (metrics disabled) does nothing.
package ops
