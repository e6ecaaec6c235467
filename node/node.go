package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/dpcache/dpcache/cache"
	"github.com/dpcache/dpcache/gossip"
	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/node/internal/catalog"
	"github.com/dpcache/dpcache/node/internal/fetch"
	"github.com/dpcache/dpcache/node/internal/ops"
	"github.com/dpcache/dpcache/node/internal/retain"
	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
	"github.com/dpcache/dpcache/source"
	"github.com/dpcache/dpcache/source/failover"
)

// Node is a distribution point. Create it with New, then call Run.
type Node struct {
	cfg      Config
	log      *slog.Logger
	cache    *cache.Cache
	trust    *manifest.Trust
	upstream []source.Source
	grpcLis  net.Listener
	httpLis  net.Listener
	grpcSrv  *grpc.Server
	health   *health.Server
	fetcher  *fetch.Fetcher // blob fetches and streams
	// latestTimes are the Last-Modified times of latest.json on /repo/.
	latestTimes changeTimes
	// instance is this process's random id in the chains of DPs that
	// upstream requests carry (names repeat across sites): a request that
	// comes back to it is refused (via.go).
	instance string

	// bg is the lifetime of background work (fetches outlive the request
	// that started them); cancelled when Run returns.
	bg       context.Context
	bgCancel context.CancelFunc

	gossip *gossip.Gossip // nil when clustering is off
	keys   *keyFile       // nil without Config.GossipKeyFile or gossip

	metrics *ops.Metrics    // nil when Config.DisableMetrics
	status  *ops.StatusPage // the status page and its traffic history
	ready   atomic.Bool     // Run serves and the DP is not stopping (/readyz)
	// endpointCounts, set by endpoint reporting, counts the site's
	// endpoints by age bucket ("current", "24h", "3d", "7d") and by
	// last result for /metrics and the status page; called at scrape and
	// render time, concurrently. nil: no figures, the metrics are absent.
	endpointCounts func() *ops.EndpointCounts

	catalog  *catalog.Catalog // products, versions, refresh and the download task
	retainer *retain.Retainer // quota and retention passes
	pins     *retain.Pins     // readers of each blob, which retention spares

	peers *peerPool   // one connection per peer DP
	tls   *nodeTLS    // nil without TLS
	auth  *authorizer // who may ask what (auth.go)

	// sources remembers how each source fared (backoff, errors, last
	// success), for documents and blobs alike, and for operators.
	sources *failover.Health

	mu     sync.Mutex // protects closed
	closed bool
}

// New opens the DP's cache and binds its listeners; it starts nothing.
// Close releases what New acquired if Run is never called.
func New(cfg Config) (*Node, error) {
	return newNode(cfg, testHooks{})
}

// testHooks adjust a Node for tests; New uses none.
type testHooks struct {
	// tuneGossip adjusts the gossip configuration before it is used
	// (tests shorten memberlist's timers with it).
	tuneGossip func(*gossip.Config)
	// wrapLimiter wraps the upstream rate limiter (tests count what is
	// charged to it).
	wrapLimiter func(fetch.Limiter) fetch.Limiter
}

// newNode is New with test hooks.
func newNode(cfg Config, hooks testHooks) (*Node, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	n := &Node{
		cfg:   cfg,
		log:   cfg.Logger.With("component", "node", "node", cfg.Name),
		trust: cfg.Trust,
	}
	var err error
	if n.tls, err = loadTLS(cfg, n); err != nil {
		return nil, err
	}
	n.peers = newPeerPool(n.tls.peerOptions(cfg.SourceOptions), n.tls != nil)
	n.endpointCounts = n.countEndpoints
	n.instance = source.NewInstanceID()
	// bg is the lifetime of background work; Close cancels it. What the
	// DP asks upstream on its own (refresh, download task) carries its
	// instance id; what a request started carries the request's chain.
	n.bg, n.bgCancel = context.WithCancel(source.WithVia(context.Background(), []string{n.instance}))
	ups, err := source.ParseList(cfg.Upstream, n.tls.upstreamOptions(cfg.SourceOptions))
	if err != nil {
		return nil, fmt.Errorf("upstream: %w", err)
	}
	n.upstream = ups
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		n.closeSources()
		return nil, fmt.Errorf("data directory %s: %w", cfg.DataDir, err)
	}
	cc := cache.DefaultConfig()
	cc.Path = filepath.Join(cfg.DataDir, "cache.db")
	cc.Logger = cfg.Logger
	cc.NoFreelistSync = true
	if n.cache, err = cache.Open(cc); err != nil {
		n.closeSources()
		return nil, err
	}
	n.retainer = retain.New(retain.Config{KeepVersions: cfg.KeepVersions, CacheMax: cfg.CacheMax, DataDir: cfg.DataDir, Logger: n.log}, n.cache, retainView{n})
	n.pins = n.retainer.Pins()
	// One memory of failed sources for documents and blobs: a source that
	// failed for one is tried last for the other too, until its backoff
	// ends.
	sources := failover.NewHealth(failover.Backoff{})
	n.sources = sources
	n.catalog = catalog.New(n.bg, catalog.Config{
		Refresh: cfg.Refresh, Products: cfg.Products, PrefetchInterval: cfg.PrefetchInterval,
		UpstreamWindow: cfg.UpstreamWindow, FetchParallel: cfg.FetchParallel, CacheMax: cfg.CacheMax,
		StallTimeout: cfg.StallTimeout, Health: sources, Logger: n.log,
	}, n.cache, cfg.Trust, catalogView{n}, n.retainer, catalogView{n})
	if err := n.catalog.Load(); err != nil {
		n.Close()
		return nil, err
	}
	if n.grpcLis, err = net.Listen("tcp", cfg.GRPCAddr); err != nil {
		n.Close()
		return nil, fmt.Errorf("gRPC listener on %s: %w (is another dpcache running? choose --grpc)", cfg.GRPCAddr, err)
	}
	if cfg.HTTPAddr != "" {
		if n.httpLis, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
			n.Close()
			return nil, fmt.Errorf("HTTP listener on %s: %w (choose --http)", cfg.HTTPAddr, err)
		}
		n.httpLis = n.tls.httpListener(n.httpLis)
	}
	if cfg.GossipAddr != "" {
		if cfg.GossipKeyFile != "" {
			n.keys = newKeyFile(cfg.GossipKeyFile, n.log)
		}
		if n.gossip, err = n.newGossip(hooks.tuneGossip); err != nil {
			n.Close()
			return nil, err
		}
	}
	if !cfg.DisableMetrics {
		if n.metrics, err = ops.NewMetrics(ops.MetricsConfig{
			Name: cfg.Name, Site: cfg.Site, DataDir: cfg.DataDir, CacheMax: cfg.CacheMax,
			Upstream: n.upstream, Registry: cfg.Registry, Logger: n.log,
		}, n.cache, opsView{n}); err != nil {
			n.Close()
			return nil, err
		}
	}
	fc := fetch.Config{ServeChunk: cfg.ServeChunk, ServeMemory: cfg.ServeMemory, StallTimeout: cfg.StallTimeout, Health: sources, Logger: n.log}
	if l := newUpstreamLimiter(cfg.UpstreamRate); l != nil {
		fc.Limiter = l
	}
	if hooks.wrapLimiter != nil {
		fc.Limiter = hooks.wrapLimiter(fc.Limiter)
	}
	n.fetcher = fetch.New(n.bg, fc, n.cache, n.catalog, routerView{n}, n.pins, n.metrics, n.publishFetching)
	n.status = ops.NewStatusPage(ops.PageConfig{Name: cfg.Name, Site: cfg.Site, DataDir: cfg.DataDir, Logger: n.log}, opsView{n})
	opts := append(pb.ServerOptions(), n.tls.serverOptions()...)
	opts = append(opts, recoverOptions(n.log)...)
	opts = append(opts, n.metrics.ServerOptions()...)
	n.auth = n.newAuthorizer()
	opts = append(opts, n.auth.serverOptions()...)
	n.grpcSrv = grpc.NewServer(append(opts, viaOptions(n.instance, n.log)...)...)
	pb.RegisterDistributionServiceServer(n.grpcSrv, &distributionServer{n: n})
	pb.RegisterAdminServiceServer(n.grpcSrv, &adminServer{n: n})
	n.health = health.NewServer()
	healthpb.RegisterHealthServer(n.grpcSrv, n.health)
	reflection.Register(n.grpcSrv)
	return n, nil
}

// GRPCAddr returns the address the gRPC server listens on.
func (n *Node) GRPCAddr() string { return n.grpcLis.Addr().String() }

// HTTPAddr returns the address the HTTP server listens on, or "".
func (n *Node) HTTPAddr() string {
	if n.httpLis == nil {
		return ""
	}
	return n.httpLis.Addr().String()
}

// Run serves until ctx is cancelled, then stops gracefully and closes
// everything the node owns: it leaves the gossip cluster (announced, so
// peers see it "left"), ends WatchLatest streams, closes connections that
// have not started a request, and gives requests in progress up to 5s to
// finish. An idle DP stops in well under a second.
func (n *Node) Run(ctx context.Context) error {
	defer n.Close()
	g, gctx := errgroup.WithContext(ctx)
	grpcOpening, httpOpening := newOpeningConns(), newOpeningConns()
	g.Go(func() error {
		if err := n.grpcSrv.Serve(handshakeListener{n.grpcLis, grpcOpening}); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("gRPC server: %w", err)
		}
		return nil
	})
	var httpSrv *http.Server
	if n.httpLis != nil {
		// No WriteTimeout: a blob download may take hours on a slow link;
		// a client that stops reading is cut by the serving side's stall
		// timeout instead.
		// ErrorLog: failed TLS handshakes (a client without a trusted
		// certificate) are the client's problem, logged at debug.
		httpSrv = &http.Server{Handler: n.httpHandler(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: time.Minute,
			IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 64 << 10, ConnState: httpOpening.connState,
			ErrorLog: slog.NewLogLogger(n.log.Handler(), slog.LevelDebug)}
		g.Go(func() error {
			if err := httpSrv.Serve(n.httpLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("HTTP server: %w", err)
			}
			return nil
		})
	}
	if n.gossip != nil {
		n.publishAllVersions()
		g.Go(func() error { return n.gossip.Run(gctx) })
		g.Go(func() error { n.followSite(gctx); return nil })
		g.Go(func() error { n.replicate(gctx); return nil })
		if n.keys != nil {
			g.Go(func() error { n.keys.watch(gctx, keyFilePoll); return nil })
		}
	}
	g.Go(func() error { n.catalog.Run(gctx); return nil })
	g.Go(func() error { n.retainer.Run(gctx); return nil })
	g.Go(func() error { n.status.Run(gctx); return nil })
	n.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	n.ready.Store(true)
	n.log.Info("distribution point started", "grpc", n.GRPCAddr(), "http", n.HTTPAddr(), "site", n.cfg.Site, "upstream", n.upstreamNames(), "instance", n.instance,
		"tls", n.tls != nil, "client_certificates", n.tls.mutual())

	<-gctx.Done()
	n.ready.Store(false)
	n.log.Info("distribution point stopping")
	n.health.Shutdown()
	n.bgCancel() // stop upstream fetches and watches: waiting readers get Unavailable
	stopServers(n.grpcSrv, grpcOpening, httpSrv, httpOpening)
	err := g.Wait()
	n.fetcher.Stop()
	n.catalog.Stop()
	if err != nil {
		return err
	}
	return nil
}

// Close releases the cache, listeners and sources. Run calls it; call it
// directly only when Run was never called. Safe to call twice.
func (n *Node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	n.mu.Unlock()
	if n.bgCancel != nil {
		n.bgCancel()
	}
	if n.fetcher != nil {
		n.fetcher.Stop()
	}
	if n.catalog != nil {
		n.catalog.Stop()
	}
	if n.grpcLis != nil {
		n.grpcLis.Close()
	}
	if n.httpLis != nil {
		n.httpLis.Close()
	}
	n.closeSources()
	if n.gossip != nil {
		n.gossip.Close()
	}
	n.peers.close()
	if n.cache != nil {
		return n.cache.Close()
	}
	return nil
}

func (n *Node) closeSources() {
	for _, s := range n.upstream {
		s.Close()
	}
}

func (n *Node) upstreamNames() []string {
	out := make([]string, len(n.upstream))
	for i, s := range n.upstream {
		out[i] = s.String()
	}
	return out
}

// Traffic is a snapshot of the DP's byte counters.
type Traffic struct {
	UpstreamBytes int64 `json:"upstream_bytes"`
	PeerBytes     int64 `json:"peer_bytes"`
	ServedBytes   int64 `json:"served_bytes"`
}

// Traffic returns the DP's byte counters since start.
func (n *Node) Traffic() Traffic {
	t := n.fetcher.Traffic()
	return Traffic{UpstreamBytes: t.Upstream, PeerBytes: t.Peer, ServedBytes: t.Served}
}

func (n *Node) httpHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET "+repoPrefix, n.serveRepo)
	mux.Handle("GET /{$}", n.status)
	mux.Handle("GET /metrics", n.metrics.Handler())
	mux.HandleFunc("GET /readyz", n.serveReady)
	return recoverHTTP(n.log, n.metrics.InstrumentHTTP(n.auth.http(mux)))
}

// serveReady answers /readyz: 200 once Run serves with the cache open; 503
// before that, while the DP stops, and while it can serve nothing at all
// (it holds no version whole and every upstream is failing: an endpoint
// sent to it would only wait).
func (n *Node) serveReady(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if !n.ready.Load() {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "not ready: starting or stopping")
		return
	}
	if since, failing := n.upstreamFailing(); failing && !n.holdsAny() {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "not ready: no version held and every upstream failing since %s\n", since.UTC().Format(time.RFC3339))
		return
	}
	fmt.Fprintln(w, "ready")
}

// upstreamFailing reports whether every upstream source's last attempt
// failed, and since when the last of them has been failing (so the time
// the DP lost its last upstream). A DP with no upstream is never failing.
func (n *Node) upstreamFailing() (time.Time, bool) {
	if len(n.upstream) == 0 {
		return time.Time{}, false
	}
	var since time.Time
	for _, s := range n.upstream {
		st := n.sources.Status(s.String())
		if st.FailingSince.IsZero() {
			return time.Time{}, false
		}
		if st.FailingSince.After(since) {
			since = st.FailingSince
		}
	}
	return since, true
}

// holdsAny reports whether the DP holds any version of any product whole.
func (n *Node) holdsAny() bool {
	products, err := n.cache.Products()
	if err != nil {
		return false
	}
	for _, p := range products {
		if _, err := n.cache.LatestVersion(p); err == nil {
			return true
		}
	}
	return false
}
