package node

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/source"
	"github.com/dpcache/dpcache/source/failover"
)

// Config is a distribution point's configuration. Build one with
// DefaultConfig and override what you need.
type Config struct {
	// Name identifies the DP in its cluster and in logs. Default: the host name.
	Name string
	// Site is the DP's site (a branch office, a LAN). Default "default".
	Site string
	// DataDir holds the bbolt cache (cache.db). Default "./dpcache-data".
	DataDir string
	// GRPCAddr is where endpoints and peers reach the DP. Default ":7340".
	GRPCAddr string
	// HTTPAddr serves the status page (/), /metrics, /healthz, /readyz and
	// /repo/. Default ":7341". Empty disables the HTTP server.
	HTTPAddr string
	// GossipAddr is where the DP gossips with the other DPs (memberlist,
	// TCP and UDP). Default ":7946". Empty disables clustering: the DP works
	// alone.
	GossipAddr string
	// Join lists gossip addresses of DPs to join; retried until the DP is
	// in a cluster again (a healed partition rejoins by itself).
	Join []string
	// GossipKeyFile, when set, encrypts gossip with the keys of this file
	// (`--gossip-key-file`): one base64 key of 16, 24 or 32 bytes per line,
	// blank lines and # comments allowed; the first key encrypts, every
	// key decrypts. The file is read at start (it must hold a key) and
	// again when it changes (checked every 2s) and on Node.Reload; a file
	// that cannot be used then keeps the keys in use and logs an error. A
	// key is rotated by adding it on every DP, then moving it first on
	// every DP, then removing the old one. Set it or GossipKey, not both.
	GossipKeyFile string
	// GossipKey, when set (16, 24 or 32 bytes), encrypts gossip; every DP
	// of the cluster needs the same key. Deprecated: use GossipKeyFile,
	// whose keys can be rotated without a restart.
	GossipKey []byte
	// Advertise is the host (name or IP) other DPs and endpoints use to
	// reach this DP's gRPC and HTTP ports. Default: the host of GRPCAddr
	// when it names one, else this machine's first private IP address.
	Advertise string
	// Upstream lists the source URLs tried in order on a miss.
	Upstream []string
	// Trust holds the vendor public keys documents must be signed with.
	// Required.
	Trust *manifest.Trust
	// Refresh is how often the DP asks upstream for the newest latest of
	// every product it keeps: those of Products and those endpoints asked
	// for. Each wait is lengthened by a random 0-10% so the DPs of a site
	// do not all ask at once. A newer version of a product endpoints asked
	// for is fetched whole at once (an endpoint is waiting); one of
	// Products follows UpstreamWindow. A version is announced only once
	// held whole. Default 1 minute (`--refresh`).
	Refresh time.Duration
	// Products are kept current even before any endpoint asks (the
	// download task, "download updates to the repository"): a newer
	// version found by a refresh is fetched whole at once, inside
	// UpstreamWindow when one is set (outside it, at the window's start).
	// The site's DPs share the work by blob ownership, so the site fetches
	// each blob once.
	Products []string
	// PrefetchInterval, when positive, is how often Products are refreshed
	// instead of Refresh: the deprecated `--prefetch-interval`, kept so
	// that old configurations work. Default 0: Products follow Refresh.
	PrefetchInterval time.Duration
	// UpstreamWindow, when set, is the daily period (local time) in which
	// the download task may fetch a newer version of Products; one found
	// outside it is fetched at the window's start. Fetches already started
	// finish; misses (an endpoint asking for what the site lacks), the
	// refresh of products endpoints asked for and AdminService.Prefetch
	// are not limited. Default: the zero Window, always open.
	UpstreamWindow Window
	// StallTimeout is how long a transfer (from upstream, a peer or the
	// blob's owner) may deliver no byte before the DP moves to the next
	// source, resuming at the offset reached. Default 30 s
	// (`--stall-timeout`).
	StallTimeout time.Duration
	// UpstreamRate bounds the blob bytes per second the download task
	// (Products, and the versions peer DPs' download tasks ask this DP
	// for) reads from upstream, all its fetches together (one token
	// bucket; signed documents, a few KiB, are not counted). What an
	// endpoint or AdminService.Prefetch waits for is not limited: a fetch
	// stops being limited when one of them joins it. Blobs of databases
	// files are fetched before those of modules, so they come first when
	// the budget is short. 0 (default) is unlimited.
	UpstreamRate int64
	// KeepVersions is how many versions of each product the cache keeps
	// (the newest); older ones and the blobs only they use are deleted
	// once a newer version is held whole. Default 3.
	KeepVersions int
	// CacheMax bounds the cache's own bytes (blobs whole and in part, not
	// the bbolt file's free pages): past it, the oldest versions that are
	// not their product's latest are evicted first. The latest version of
	// each product and blobs being streamed are never evicted, so the
	// cache may exceed it when those alone do (a warning is logged). 0
	// (default) is unlimited.
	CacheMax int64
	// SourceOptions tune upstream access (timeouts, proxy). Its CAFile
	// (`--ca`) also verifies the peers this DP dials.
	SourceOptions source.Options
	// TLSCertFile and TLSKeyFile, when set (both or neither), are the DP's
	// certificate and key (PEM): gRPC and HTTP are served over TLS, and
	// the DP presents them when it dials its peers, which it then does
	// over TLS (every DP of a cluster runs TLS, or none), and grpcs://
	// upstreams. Replaced files are used from the next handshake on (see
	// package pki; Reload re-reads them at once). With TLS and gossip on
	// but no gossip key, New logs a warning: gossip would carry the
	// cluster's membership and holdings in plain text beside encrypted
	// gRPC. With TLS, the DP signs its holdings in gossip with its key and
	// accepts members' holdings only when signed by the dp certificate
	// (from the CA peers are verified with) that names the member
	// (gossip.Config.Identity): its certificate's common name must be
	// Name.
	TLSCertFile, TLSKeyFile string
	// ClientCAFile, when set (with TLSCertFile), is the PEM file of the CA
	// whose certificates clients must present on gRPC (mTLS) and may
	// present on HTTP; their role (dp, endpoint, admin) decides what they
	// may do (auth.go). Without it, AdminService and forwarded requests
	// are honoured only from loopback and the cluster's members. It also
	// verifies the peers this DP dials when SourceOptions.CAFile is empty.
	ClientCAFile string
	// ServeChunk is the size of the messages a blob is streamed in. Default
	// 256 KiB: large enough to amortise per-message costs, small enough that
	// many concurrent streams fit the ServeMemory budget.
	ServeChunk int
	// ServeMemory bounds the memory of chunk buffers queued for sending,
	// across all streams; streams beyond it wait their turn. Default 64 MiB,
	// which keeps a DP serving hundreds of endpoints at once well under
	// 256 MiB of resident memory.
	ServeMemory int64
	// FetchParallel bounds how many blobs of one version are fetched from
	// upstream at once. Default 4.
	FetchParallel int
	// Logger receives the DP's logs. Default slog.Default().
	Logger *slog.Logger
	// Registry receives the DP's Prometheus metrics (dpcache_*), served on
	// /metrics. Default (nil): a registry of the DP's own, which also holds
	// the Go runtime and process collectors; several DPs in one process
	// never clash. A registry given here must not hold another DP's
	// metrics (New fails), nor the Go and process collectors if /metrics
	// should show them: add them yourself.
	Registry *prometheus.Registry
	// DisableMetrics turns instrumentation off: nothing is counted and
	// /metrics answers 404. The status page works either way.
	DisableMetrics bool
}

// DefaultConfig returns a Config with every default documented above.
func DefaultConfig() Config {
	return Config{
		Site:          "default",
		DataDir:       "./dpcache-data",
		GRPCAddr:      ":7340",
		GossipAddr:    ":7946",
		HTTPAddr:      ":7341",
		Refresh:       time.Minute,
		SourceOptions: source.DefaultOptions(),
		ServeChunk:    256 << 10,
		ServeMemory:   64 << 20,
		FetchParallel: 4,
		StallTimeout:  failover.DefaultOptions().StallTimeout,
		KeepVersions:  3,
	}
}

// Validate reports the first problem with c.
func (c *Config) Validate() error {
	var errs []error
	if c.Name == "" {
		errs = append(errs, errors.New("name is empty"))
	}
	if err := manifest.ValidName(c.Site); err != nil {
		errs = append(errs, fmt.Errorf("site: %w", err))
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("data directory is empty"))
	}
	if c.GRPCAddr == "" {
		errs = append(errs, errors.New("gRPC address is empty"))
	}
	if c.Trust == nil {
		errs = append(errs, errors.New("no trusted key: give --trust FILE (the vendor's minisign public key)"))
	}
	if len(c.Upstream) == 0 {
		errs = append(errs, errors.New("no upstream source: give --upstream URL"))
	}
	if c.GossipKeyFile != "" && len(c.GossipKey) > 0 {
		errs = append(errs, errors.New("both a gossip key and a gossip key file: give --gossip-key-file only"))
	}
	if c.Refresh <= 0 {
		errs = append(errs, fmt.Errorf("refresh interval %v must be positive", c.Refresh))
	}
	for _, p := range c.Products {
		if err := manifest.ValidName(p); err != nil {
			errs = append(errs, fmt.Errorf("product %q: %w", p, err))
		}
	}
	if c.ServeChunk < 4<<10 || c.ServeChunk > 16<<20 {
		errs = append(errs, fmt.Errorf("serve chunk %d must be between 4 KiB and 16 MiB", c.ServeChunk))
	}
	if c.ServeMemory < int64(c.ServeChunk) {
		errs = append(errs, fmt.Errorf("serve memory %d must hold at least one chunk (%d)", c.ServeMemory, c.ServeChunk))
	}
	if c.FetchParallel < 1 {
		errs = append(errs, fmt.Errorf("fetch parallelism %d must be at least 1", c.FetchParallel))
	}
	if c.PrefetchInterval < 0 {
		errs = append(errs, fmt.Errorf("prefetch interval %v must not be negative (0 follows the refresh interval)", c.PrefetchInterval))
	}
	if c.StallTimeout < 0 {
		errs = append(errs, fmt.Errorf("stall timeout %v is negative", c.StallTimeout))
	}
	if c.UpstreamRate < 0 {
		errs = append(errs, fmt.Errorf("upstream rate %d must not be negative (0 is unlimited)", c.UpstreamRate))
	}
	if c.KeepVersions < 1 {
		errs = append(errs, fmt.Errorf("keep versions %d must be at least 1 (the latest is always kept)", c.KeepVersions))
	}
	if c.CacheMax < 0 {
		errs = append(errs, fmt.Errorf("cache max %d must not be negative (0 is unlimited)", c.CacheMax))
	}
	if w := c.UpstreamWindow; w.From < 0 || w.From >= 24*time.Hour || w.To < 0 || w.To >= 24*time.Hour {
		errs = append(errs, fmt.Errorf("upstream window %v..%v: both ends must be times of day in [0, 24h)", w.From, w.To))
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		errs = append(errs, errors.New("TLS: give both --tls-cert and --tls-key, or neither"))
	}
	if c.ClientCAFile != "" && c.TLSCertFile == "" {
		errs = append(errs, errors.New("--client-ca needs --tls-cert and --tls-key: clients can only present certificates over TLS"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("node config: %w", err)
	}
	return nil
}
