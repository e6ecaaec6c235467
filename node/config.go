package node

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/dpcache/dpcache/gossip"
	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/source"
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
	// HTTPAddr serves /healthz (and, in later versions, /metrics, the status
	// page and /repo/). Default ":7341". Empty disables the HTTP server.
	HTTPAddr string
	// GossipAddr is where the DP gossips with the other DPs (memberlist,
	// TCP and UDP). Default ":7946". Empty disables clustering: the DP works
	// alone.
	GossipAddr string
	// Join lists gossip addresses of DPs to join; retried until the DP is
	// in a cluster again (a healed partition rejoins by itself).
	Join []string
	// GossipKey, when set (16, 24 or 32 bytes), encrypts gossip; every DP
	// of the cluster needs the same key.
	GossipKey []byte
	// Advertise is the host (name or IP) other DPs and endpoints use to
	// reach this DP's gRPC and HTTP ports. Default: the host of GRPCAddr
	// when it names one, else this machine's first private IP address.
	Advertise string
	// Gossip, when set, adjusts the gossip configuration before it is used
	// (tests shorten memberlist's timers with it).
	Gossip func(*gossip.Config)
	// Upstream lists the source URLs tried in order on a miss.
	Upstream []string
	// Trust holds the vendor public keys documents must be signed with.
	// Required.
	Trust *manifest.Trust
	// Refresh is how often the DP asks upstream for a newer latest of each
	// product it serves. Default 1 minute.
	Refresh time.Duration
	// Products are kept current even before any endpoint asks.
	Products []string
	// SourceOptions tune upstream access (timeouts, proxy).
	SourceOptions source.Options
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
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("node config: %w", err)
	}
	return nil
}
