package catalog

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/dpcache/dpcache/cache"
	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/source"
	"github.com/dpcache/dpcache/source/failover"
)

// Config is what the catalogue keeps current, and how.
type Config struct {
	// Refresh is how often upstream is asked for a newer latest of every
	// product kept (those of Products and those endpoints asked for); a
	// random 0-10% is added to each wait. A newer version of a product
	// endpoints asked for is fetched whole at once.
	Refresh time.Duration
	// Products are kept current before any endpoint asks (the download
	// task): a newer version is fetched whole at once inside
	// UpstreamWindow, and at the window's start when found outside it.
	Products []string
	// PrefetchInterval, when positive, replaces Refresh for Products (the
	// deprecated --prefetch-interval). 0: Products follow Refresh.
	PrefetchInterval time.Duration
	// UpstreamWindow confines the download task's fetches (the zero
	// Window is always open).
	UpstreamWindow Window
	// FetchParallel bounds the blobs of one version fetched at once.
	FetchParallel int
	// CacheMax, when set, makes room in the cache before a version is
	// fetched.
	CacheMax int64
	// StallTimeout and Health tune the failover engine that fetches
	// documents (failover.Options): Health, shared with the blob
	// fetches, keeps a failing source in backoff. Nil: the catalogue's
	// own.
	StallTimeout time.Duration
	Health       *failover.Health
	// Logger receives the catalogue's logs. Default slog.Default().
	Logger *slog.Logger
}

// Store is the part of the cache the catalogue reads and writes
// (*cache.Cache implements it).
type Store interface {
	LatestVersion(product string) (cache.Version, error)
	Versions(product string) ([]cache.Version, error)
	PutVersion(v cache.Version) error
	Document(path string) (data, sig []byte, err error)
	PutDocument(path string, data, sig []byte) error
	PutManifest(product, version, path string, data, sig []byte) error
	Manifests() ([]cache.VersionRef, error)
	DeleteManifest(product, version string, paths ...string) error
	PutPublished(product string, p cache.Published) error
	PublishedVersions() ([]cache.PublishedRecord, error)
	Stat(digest string) (int64, error)
	Blob(digest string) (cache.BlobInfo, error)
}

// Blobs fetches the blobs of a version (the DP's fetcher).
type Blobs interface {
	// EnsureBlob returns once digest is whole in the cache.
	EnsureBlob(ctx context.Context, digest string) error
	// Received returns the bytes of digest received so far while it is
	// being fetched.
	Received(digest string) (int64, bool)
	// InFlight returns the digests being fetched.
	InFlight() []string
}

// Retention makes room in the cache (the DP's retainer).
type Retention interface {
	// Pass runs a retention pass now.
	Pass(ctx context.Context) error
	// Kick asks for a pass soon; it never blocks.
	Kick()
}

// DP is what the catalogue asks of the rest of the distribution point.
type DP interface {
	// DocSources lists where signed documents come from, in order: the
	// upstream sources, then (unless ctx is forwarded) the site's DPs.
	DocSources(ctx context.Context) (upstream, peers []source.Source)
	// PublishVersions tells the cluster which versions of product the
	// cache holds whole.
	PublishVersions(product string)
	// WaitJoined returns once the DP sees another member of its cluster,
	// or after max, or at once when it has no cluster to join.
	WaitJoined(ctx context.Context, max time.Duration)
}

// Catalog is what a DP knows of products and versions, and the work that
// keeps them current. Create it with New, call Load, then Run.
type Catalog struct {
	cfg       Config
	log       *slog.Logger
	store     Store
	trust     *manifest.Trust
	blobs     Blobs
	retention Retention
	dp        DP

	ctx  context.Context    // the lifetime of version completions and document fetches
	wg   sync.WaitGroup     // version completions in flight
	docs singleflight.Group // upstream document fetches, by path

	mu             sync.Mutex                       // protects the fields below
	known          map[string]int64                 // blob sizes from verified manifests
	blobVersions   map[string][]productSerial       // versions naming each blob, from verified manifests
	chunked        map[string]*chunkedFile          // chunked files by whole digest, from verified manifests
	products       map[string]time.Time             // products this DP keeps current: when an endpoint last asked
	stale          map[string]time.Time             // products whose upstreams all offer an expired latest.json: its expiry
	upLatest       map[string]upLatest              // upstream's latest, for cold pass-through
	jobs           map[string]*Job                  // version completions in flight, by product/version
	versionChanged map[string]chan struct{}         // closed when a product's held latest changes
	versionRecs    map[string]map[uint64]versionRec // product → serial → version and publication time
	followed       map[string]followed              // the newest version set out to be taken from a peer, by product
	closed         bool
}

type upLatest struct {
	signed source.Signed
	latest *manifest.Latest
	at     time.Time
}

// New returns a Catalog whose background work lives until ctx ends or
// Stop; it starts nothing.
func New(ctx context.Context, cfg Config, store Store, trust *manifest.Trust, blobs Blobs, retention Retention, dp DP) *Catalog {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	c := &Catalog{
		cfg: cfg, log: cfg.Logger, store: store, trust: trust, blobs: blobs, retention: retention, dp: dp, ctx: ctx,
		known:          map[string]int64{},
		blobVersions:   map[string][]productSerial{},
		chunked:        map[string]*chunkedFile{},
		products:       map[string]time.Time{},
		stale:          map[string]time.Time{},
		upLatest:       map[string]upLatest{},
		jobs:           map[string]*Job{},
		versionChanged: map[string]chan struct{}{},
		versionRecs:    map[string]map[uint64]versionRec{},
		followed:       map[string]followed{},
	}
	for _, p := range cfg.Products {
		c.products[p] = time.Now()
	}
	return c
}

// Load learns the manifests and publication times the cache holds.
func (c *Catalog) Load() error {
	if err := c.loadKnown(); err != nil {
		return err
	}
	if err := c.loadPublished(); err != nil {
		return fmt.Errorf("node: %w", err)
	}
	return nil
}

// Run runs the refresh loop and the download task until ctx ends.
func (c *Catalog) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { c.refreshLoop(ctx) })
	wg.Go(func() { c.productLoop(ctx) })
	wg.Wait()
}

// Stop refuses new version completions and waits for those in flight
// (cancel the context given to New first). Safe to call twice.
func (c *Catalog) Stop() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.wg.Wait()
}

// productSerial names one version of a product.
type productSerial struct {
	product string
	version string
	serial  uint64
}

// versionsOf returns the versions (from verified manifests) that name digest.
func (c *Catalog) versionsOf(digest string) []productSerial {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.blobVersions[digest])
}

// registerVersionsLocked records that the version of m, under serial,
// names each blob of m (a chunked file's chunks, not its whole digest).
func (c *Catalog) registerVersionsLocked(m *manifest.Manifest, serial uint64) {
	ps := productSerial{m.Product, m.Version, serial}
	for _, f := range m.Blobs() {
		if !slices.Contains(c.blobVersions[f.SHA256], ps) {
			c.blobVersions[f.SHA256] = append(c.blobVersions[f.SHA256], ps)
		}
	}
}

// blobSize returns the size of a blob named by a verified manifest.
func (c *Catalog) BlobSize(digest string) (int64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	size, ok := c.known[digest]
	return size, ok
}

type forwardedKey struct{}

// withForwarded marks ctx as serving a request another DP forwarded.
func WithForwarded(ctx context.Context, forwarded bool) context.Context {
	if !forwarded {
		return ctx
	}
	return context.WithValue(ctx, forwardedKey{}, true)
}

func IsForwarded(ctx context.Context) bool {
	v, _ := ctx.Value(forwardedKey{}).(bool)
	return v
}

// latestDocKey is where the cache keeps the latest.json that announced a
// version (the repository keeps only the newest one at <product>/latest.json).
func LatestDocKey(product, version string) string {
	return product + "/" + version + "/" + manifest.LatestName
}

// Bounds of the products a DP keeps current for its endpoints (those of
// Config.Products are always kept).
const (
	// maxProducts bounds how many: a name past it is served but not
	// refreshed (a DP's products are a vendor's few; a flood of names is
	// not).
	maxProducts = 1000
	// productTTL is how long a product no endpoint asks for is refreshed.
	productTTL = 7 * 24 * time.Hour
)

// AddProduct keeps p current: an endpoint asked for it. Past maxProducts
// a new name is not kept. A name that every upstream answers NotFound for
// is dropped at the next refresh (dropProduct), so a typo is not polled
// for ever.
func (c *Catalog) AddProduct(p string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, kept := c.products[p]; !kept && len(c.products) >= maxProducts {
		return
	}
	c.products[p] = time.Now()
}

// Stale returns the products whose upstreams all offered an expired
// latest.json at the last check (a frozen source, a forgotten mirror),
// with that latest.json's expiry.
func (c *Catalog) Stale() map[string]time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.stale)
}

// KeptProducts returns the products the DP keeps current, sorted.
func (c *Catalog) KeptProducts() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, 0, len(c.products))
	for p := range c.products {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// dropProduct stops refreshing p, unless Config.Products names it.
func (c *Catalog) dropProduct(p, why string) {
	if slices.Contains(c.cfg.Products, p) {
		return
	}
	c.mu.Lock()
	_, kept := c.products[p]
	delete(c.products, p)
	c.mu.Unlock()
	if kept {
		c.log.Info("no longer keeping a product current", "product", p, "why", why)
	}
}

// register records the sizes of m's blobs: the DP fetches only blobs that a
// verified manifest names (Manifest.Blobs: a chunked file's chunks; its
// whole digest is no blob of the repository), and the chunks of its
// chunked files, which the DP serves whole by assembling them.
func (c *Catalog) register(m *manifest.Manifest) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range m.Blobs() {
		c.known[f.SHA256] = f.Size
	}
	c.registerChunkedLocked(m)
	c.registerVersionsLocked(m, m.Serial)
	c.rememberVersionLocked(m)
}

// registerSerial records that m's version is also known under serial, the
// serial of a latest.json that pins m: `dpcache resign` publishes a version
// again under a higher serial than its manifest's (a published manifest
// never changes). DPs announce what they hold by the serial of the
// latest.json they serve, and endpoints report it, so blob lookups
// (VersionsOf, then gossip Holders) and endpoint ages must find the
// version under either serial.
func (c *Catalog) registerSerial(m *manifest.Manifest, serial uint64) {
	if serial == m.Serial {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.registerVersionsLocked(m, serial)
	c.rememberLocked(m.Product, versionRec{Version: m.Version, Serial: serial, Published: m.Published})
}

// loadKnown registers the manifests the cache holds, and the serials of
// the versions held whole under a re-signed latest.json.
func (c *Catalog) loadKnown() error {
	refs, err := c.store.Manifests()
	if err != nil {
		return err
	}
	held := map[string][]cache.Version{}
	for _, r := range refs {
		product, version := r.Product, r.Version
		data, sig, err := c.store.Document(manifest.ManifestPath(product, version))
		if err != nil {
			c.log.Warn("cached manifest unreadable; it will be fetched again", "product", product, "version", version, "err", err)
			continue
		}
		m, err := c.trust.VerifyManifest(data, sig, nil)
		if err != nil {
			c.log.Warn("cached manifest no longer verifies; it will be fetched again", "product", product, "version", version, "err", err)
			continue
		}
		c.register(m)
		vs, ok := held[product]
		if !ok {
			if vs, err = c.store.Versions(product); err != nil {
				c.log.Warn("cannot list held versions", "product", product, "err", err)
			}
			held[product] = vs
		}
		for _, v := range vs {
			if v.Version == version {
				c.registerSerial(m, v.Serial)
			}
		}
	}
	return nil
}

// loadPublished loads the publication times kept by persistPublished.
func (c *Catalog) loadPublished() error {
	recs, err := c.store.PublishedVersions()
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range recs {
		if manifest.ValidName(r.Product) != nil {
			c.log.Warn("ignoring an unreadable publication record", "product", r.Product, "version", r.Version)
			continue
		}
		if _, known := c.versionRecs[r.Product][r.Serial]; !known {
			c.rememberLocked(r.Product, r.Published)
		}
	}
	return nil
}
