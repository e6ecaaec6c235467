package ops

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/dpcache/dpcache/cache"
	"github.com/dpcache/dpcache/gossip"
	"github.com/dpcache/dpcache/source"
	"github.com/dpcache/dpcache/source/failover"
)

// Endpoint age buckets (docs/design.md: endpoints --json "age"), in display order.
var endpointAgeBuckets = []string{"current", "24h", "3d", "7d"}

// Metrics is a DP's Prometheus instrumentation. Most figures are read from
// the DP's state when /metrics is scraped (byte counters, cache statistics,
// fetches, gossip members, disk); only what has no state to read is counted
// as it happens, on pre-resolved atomics: cache hits and misses, upstream
// bytes by source, evictions, and gRPC and HTTP requests.
//
// Every method is safe for concurrent use and does nothing on a nil
// *Metrics (metrics disabled), so callers never check.
type Metrics struct {
	cfg     MetricsConfig
	state   State
	store   Stats
	reg     *prometheus.Registry
	started time.Time

	hits, misses atomic.Int64
	upstream     []upstreamCounter // one per configured upstream, in order
	evictBlobs   atomic.Int64
	evictBytes   atomic.Int64

	grpcRequests *prometheus.CounterVec // service, method, code
	grpcInFlight *prometheus.GaugeVec   // service, method
	httpRequests *prometheus.CounterVec // handler, code
	httpInFlight prometheus.Gauge

	info, served, peer, upstreamDesc, requests                                 *prometheus.Desc
	blobs, bytes, pendingBlobs, pendingBytes, versions                         *prometheus.Desc
	fileBytes, latestSerial, evictions, evictedBytes                           *prometheus.Desc
	maxBytes                                                                   *prometheus.Desc
	fetches, members, gossipDropped, stale, endpoints, diskFree, diskLow, upAt *prometheus.Desc
	upErrors, upFailing, upLastOK, endpointResults                             *prometheus.Desc
}

// EndpointResults are the results an endpoint reports of its last update
// (`update --json` "status"), in display order.
var EndpointResults = []string{"updated", "up-to-date", "held", "stale", "failed"}

// EndpointCounts is how many of the site's endpoints are in each age
// bucket (every bucket present) and reported each result of
// EndpointResults (every result present; others are not counted).
type EndpointCounts struct {
	Ages    map[string]int
	Results map[string]int
}

// upstreamCounter counts the blob bytes read from one upstream source.
// Sources that print the same (two identical URLs) share one counter, so
// every label set is unique.
type upstreamCounter struct {
	src   source.Source
	name  string
	bytes *atomic.Int64
	first bool // the first source with this name: the one exported
}

// MetricsConfig is what the metrics say about the DP itself.
type MetricsConfig struct {
	Name, Site string
	DataDir    string // whose file system's free space is shown
	CacheMax   int64  // the quota shown (0: unlimited)
	// Upstream are the DP's upstream sources, in order: their bytes are
	// counted by source.
	Upstream []source.Source
	// Registry receives the metrics. nil: a registry of the DP's own, with
	// the Go runtime and process collectors.
	Registry *prometheus.Registry
	Logger   *slog.Logger
}

// Stats is the part of the cache the metrics read at scrape time
// (*cache.Cache implements it).
type Stats interface {
	Stats() (cache.Stats, error)
	Products() ([]string, error)
	LatestVersion(product string) (cache.Version, error)
}

// State is the DP's state the metrics read at scrape time. Its methods are
// called concurrently, from the scraping goroutine.
type State interface {
	// Traffic returns the byte counters: read from upstream, read from
	// peers, served.
	Traffic() (upstream, peer, served int64)
	// FetchesInFlight is the number of blob fetches in progress.
	FetchesInFlight() int
	// Members returns the cluster's members in every state, or nil when
	// clustering is off.
	Members() []gossip.Member
	// Stale returns the products whose upstreams all offer an expired
	// latest.json.
	Stale() map[string]time.Time
	// SourceStatus says how the named source fared (the failover
	// engine's memory of it).
	SourceStatus(name string) failover.SourceStatus
	// GossipDropped counts the gossip messages dropped as malformed or
	// forged (0 when clustering is off).
	GossipDropped() uint64
	// EndpointCounts counts the site's endpoints by age bucket and by
	// the result of their last update; nil when endpoint reporting gives
	// no figures.
	EndpointCounts() *EndpointCounts
}

// NewMetrics registers the DP's metrics on cfg.Registry.
func NewMetrics(cfg MetricsConfig, store Stats, state State) (*Metrics, error) {
	reg := cfg.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	m := &Metrics{cfg: cfg, state: state, store: store, reg: reg, started: time.Now()}
	byName := map[string]*atomic.Int64{}
	for _, s := range cfg.Upstream {
		name := s.String()
		c, seen := byName[name]
		if !seen {
			c = new(atomic.Int64)
			byName[name] = c
		}
		m.upstream = append(m.upstream, upstreamCounter{src: s, name: name, bytes: c, first: !seen})
	}
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	m.info = d("dpcache_node_info", "Always 1; labels name the distribution point and its site.", "name", "site")
	m.upAt = d("dpcache_node_start_time_seconds", "When the distribution point started, in seconds since the Unix epoch.")
	m.served = d("dpcache_serve_bytes_total", "Blob bytes sent to endpoints and peer DPs (gRPC and HTTP).")
	m.peer = d("dpcache_peer_bytes_total", "Blob bytes read from peer DPs of the site.")
	m.upstreamDesc = d("dpcache_upstream_bytes_total", "Blob bytes read from each upstream source (the internet link); the source URL is shown without credentials.", "source")
	m.requests = d("dpcache_cache_requests_total", "Blob requests answered from the cache whole (hit) or through a fetch (miss).", "result")
	m.blobs = d("dpcache_cache_blobs", "Blobs held whole in the cache.")
	m.bytes = d("dpcache_cache_bytes", "Bytes of the blobs held whole in the cache.")
	m.pendingBlobs = d("dpcache_cache_pending_blobs", "Blobs stored in part (a fetch in progress or interrupted).")
	m.pendingBytes = d("dpcache_cache_pending_bytes", "Bytes stored of blobs held in part.")
	m.versions = d("dpcache_cache_versions", "Product versions recorded in the cache, all products.")
	m.maxBytes = d("dpcache_cache_max_bytes", "The cache's quota (--cache-max); 0 when unlimited.")
	m.fileBytes = d("dpcache_cache_file_bytes", "Size of the bbolt cache file (its high-water mark).")
	m.latestSerial = d("dpcache_cache_latest_serial", "Serial of the newest version of each product held whole.", "product")
	m.evictions = d("dpcache_cache_evictions_total", "Blobs evicted from the cache (quota and retention).")
	m.evictedBytes = d("dpcache_cache_evicted_bytes_total", "Bytes of the blobs evicted from the cache.")
	m.fetches = d("dpcache_fetches_in_flight", "Blob fetches in progress (from peers or upstream).")
	m.stale = d("dpcache_upstream_stale", "1 for a product whose upstreams all offer an expired latest.json (a frozen source or a forgotten mirror); the DP serves the newest of them.", "product")
	m.upErrors = d("dpcache_upstream_errors_total", "Failed requests to each upstream source: refused or timed-out connections, stalls, corrupt or unverifiable content (not \"not found\").", "source")
	m.upFailing = d("dpcache_upstream_failing", "1 while the last request to the upstream source failed, else 0.", "source")
	m.upLastOK = d("dpcache_upstream_last_success_timestamp_seconds", "When the upstream source last served a verified document or blob, in seconds since the Unix epoch; absent until it has.", "source")
	m.gossipDropped = d("dpcache_gossip_dropped_messages_total", "Gossip messages, parts and certificates dropped: malformed, with a clock from the future, or, with DP certificates, not signed by the member they describe (forged) or from an untrusted certificate.")
	m.members = d("dpcache_gossip_members", "Members of the cluster by state, as this DP sees them (itself included).", "state")
	m.endpoints = d("dpcache_endpoints", "Endpoints by how far their installed version is behind the newest (current, 24h, 3d, 7d).", "age")
	m.endpointResults = d("dpcache_endpoint_results", "Endpoints by the result of their last update: updated, up-to-date, held (after a rollback), stale (every source offered an expired version), failed.", "result")
	m.diskFree = d("dpcache_disk_free_bytes", "Free bytes on the file system of the data directory.")
	m.diskLow = d("dpcache_disk_low", fmt.Sprintf("1 when the data directory's file system has less than %d bytes free, else 0.", LowDiskThreshold))

	m.grpcRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "dpcache_grpc_requests_total", Help: "gRPC requests handled, by service, method and status code.",
	}, []string{"service", "method", "code"})
	m.grpcInFlight = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "dpcache_grpc_requests_in_flight", Help: "gRPC requests (including open streams) being handled.",
	}, []string{"service", "method"})
	m.httpRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "dpcache_http_requests_total", Help: "HTTP requests handled, by route and status code.",
	}, []string{"handler", "code"})
	m.httpInFlight = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "dpcache_http_requests_in_flight", Help: "HTTP requests being handled.",
	})
	for _, c := range []prometheus.Collector{m, m.grpcRequests, m.grpcInFlight, m.httpRequests, m.httpInFlight} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("registering metrics: %w (a registry serves one DP)", err)
		}
	}
	return m, nil
}

// CacheRequest counts a blob request: hit when the blob was whole in the
// cache.
func (m *Metrics) CacheRequest(hit bool) {
	if m == nil {
		return
	}
	if hit {
		m.hits.Add(1)
	} else {
		m.misses.Add(1)
	}
}

// UpstreamBytes returns the counter of blob bytes read from src, or nil
// when src is not an upstream source (a peer) or metrics are off. Called
// once per transfer; the caller adds to the counter as bytes arrive.
func (m *Metrics) UpstreamBytes(src source.Source) *atomic.Int64 {
	if m == nil {
		return nil
	}
	for i := range m.upstream {
		if m.upstream[i].src == src {
			return m.upstream[i].bytes
		}
	}
	return nil
}

// Evicted counts blobs removed from the cache by quota or retention, and
// their bytes. The retention code calls it after each eviction it commits.
func (m *Metrics) Evicted(blobs int, bytes int64) {
	if m == nil {
		return
	}
	m.evictBlobs.Add(int64(blobs))
	m.evictBytes.Add(bytes)
}

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	if m == nil {
		return http.NotFoundHandler()
	}
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorLog:      slogPrinter{m.cfg.Logger},
		ErrorHandling: promhttp.ContinueOnError,
		Registry:      m.reg, // promhttp_metric_handler_errors_total
	})
}

type slogPrinter struct{ log *slog.Logger }

func (p slogPrinter) Println(v ...any) { p.log.Warn("serving /metrics", "err", fmt.Sprint(v...)) }

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		m.info, m.upAt, m.served, m.peer, m.upstreamDesc, m.requests,
		m.blobs, m.bytes, m.pendingBlobs, m.pendingBytes, m.versions,
		m.fileBytes, m.maxBytes, m.latestSerial, m.evictions, m.evictedBytes,
		m.fetches, m.members, m.gossipDropped, m.stale, m.endpoints, m.diskFree, m.diskLow,
		m.upErrors, m.upFailing, m.upLastOK, m.endpointResults,
	} {
		ch <- d
	}
}

// Collect implements prometheus.Collector: it reads the DP's state. A
// figure that cannot be read (the cache is closing) is left out, never
// reported as zero.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	emit := func(d *prometheus.Desc, t prometheus.ValueType, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, t, v, labels...)
	}
	emit(m.info, prometheus.GaugeValue, 1, m.cfg.Name, m.cfg.Site)
	emit(m.upAt, prometheus.GaugeValue, float64(m.started.UnixNano())/1e9)
	_, peer, served := m.state.Traffic()
	emit(m.served, prometheus.CounterValue, float64(served))
	emit(m.peer, prometheus.CounterValue, float64(peer))
	for _, u := range m.upstream {
		if !u.first {
			continue
		}
		emit(m.upstreamDesc, prometheus.CounterValue, float64(u.bytes.Load()), u.name)
		st := m.state.SourceStatus(u.name)
		emit(m.upErrors, prometheus.CounterValue, float64(st.Errors), u.name)
		failing := 0.0
		if !st.FailingSince.IsZero() {
			failing = 1
		}
		emit(m.upFailing, prometheus.GaugeValue, failing, u.name)
		if !st.LastOK.IsZero() {
			emit(m.upLastOK, prometheus.GaugeValue, float64(st.LastOK.UnixNano())/1e9, u.name)
		}
	}
	emit(m.requests, prometheus.CounterValue, float64(m.hits.Load()), "hit")
	emit(m.requests, prometheus.CounterValue, float64(m.misses.Load()), "miss")
	emit(m.evictions, prometheus.CounterValue, float64(m.evictBlobs.Load()))
	emit(m.evictedBytes, prometheus.CounterValue, float64(m.evictBytes.Load()))

	if st, err := m.store.Stats(); err == nil {
		emit(m.blobs, prometheus.GaugeValue, float64(st.Blobs))
		emit(m.bytes, prometheus.GaugeValue, float64(st.Bytes))
		emit(m.pendingBlobs, prometheus.GaugeValue, float64(st.Pending))
		emit(m.pendingBytes, prometheus.GaugeValue, float64(st.PendingBytes))
		emit(m.versions, prometheus.GaugeValue, float64(st.Versions))
		emit(m.fileBytes, prometheus.GaugeValue, float64(st.FileSize))
	}
	emit(m.maxBytes, prometheus.GaugeValue, float64(m.cfg.CacheMax))
	if products, err := m.store.Products(); err == nil {
		for _, p := range products {
			if v, err := m.store.LatestVersion(p); err == nil {
				emit(m.latestSerial, prometheus.GaugeValue, float64(v.Serial), p)
			}
		}
	}

	emit(m.fetches, prometheus.GaugeValue, float64(m.state.FetchesInFlight()))

	states := map[gossip.State]int{gossip.StateAlive: 0, gossip.StateSuspect: 0, gossip.StateDead: 0, gossip.StateLeft: 0}
	if members := m.state.Members(); members != nil {
		for _, mb := range members {
			states[mb.State]++
		}
	} else {
		states[gossip.StateAlive] = 1
	}
	for s, c := range states {
		emit(m.members, prometheus.GaugeValue, float64(c), string(s))
	}
	emit(m.gossipDropped, prometheus.CounterValue, float64(m.state.GossipDropped()))
	for product := range m.state.Stale() {
		emit(m.stale, prometheus.GaugeValue, 1, product)
	}

	if counts := m.state.EndpointCounts(); counts != nil {
		for _, a := range endpointAgeBuckets {
			emit(m.endpoints, prometheus.GaugeValue, float64(counts.Ages[a]), a)
		}
		for _, r := range EndpointResults {
			emit(m.endpointResults, prometheus.GaugeValue, float64(counts.Results[r]), r)
		}
	}

	if free, ok := DiskFree(m.cfg.DataDir); ok {
		emit(m.diskFree, prometheus.GaugeValue, float64(free))
		low := 0.0
		if free < LowDiskThreshold {
			low = 1
		}
		emit(m.diskLow, prometheus.GaugeValue, low)
	}
}

// splitMethod splits "/dpcache.v1.DistributionService/ReadBlob".
func splitMethod(full string) (string, string) {
	svc, method, ok := strings.Cut(strings.TrimPrefix(full, "/"), "/")
	if !ok {
		return "unknown", full
	}
	return svc, method
}

// ServerOptions returns the gRPC interceptors that count requests.
func (m *Metrics) ServerOptions() []grpc.ServerOption {
	if m == nil {
		return nil
	}
	unary := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		svc, method := splitMethod(info.FullMethod)
		g := m.grpcInFlight.WithLabelValues(svc, method)
		g.Inc()
		resp, err := handler(ctx, req)
		g.Dec()
		m.grpcRequests.WithLabelValues(svc, method, status.Code(err).String()).Inc()
		return resp, err
	}
	stream := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		svc, method := splitMethod(info.FullMethod)
		g := m.grpcInFlight.WithLabelValues(svc, method)
		g.Inc()
		defer g.Dec()
		err := handler(srv, ss)
		m.grpcRequests.WithLabelValues(svc, method, status.Code(err).String()).Inc()
		return err
	}
	return []grpc.ServerOption{grpc.ChainUnaryInterceptor(unary), grpc.ChainStreamInterceptor(stream)}
}

// InstrumentHTTP counts the requests h handles by route (the ServeMux
// pattern matched) and status code.
func (m *Metrics) InstrumentHTTP(h http.Handler) http.Handler {
	if m == nil {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m.httpInFlight.Inc()
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			// Deferred: a handler that aborts (http.ErrAbortHandler) is
			// counted too, with the status it had sent.
			m.httpInFlight.Dec()
			route := r.Pattern
			if _, path, ok := strings.Cut(route, " "); ok {
				route = path
			}
			route = strings.TrimSuffix(route, "{$}") // "/{$}" is the status page, "/"
			if route == "" {
				route = "other"
			}
			code := sw.code
			if code == 0 {
				code = http.StatusOK
			}
			m.httpRequests.WithLabelValues(route, strconv.Itoa(code)).Inc()
		}()
		h.ServeHTTP(sw, r)
	})
}

// statusWriter records the status code a handler sends.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(p)
}

// Flush lets streamed responses reach the client as they are written.
func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
