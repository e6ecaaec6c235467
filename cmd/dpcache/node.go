package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/url"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"

	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/node"
)

func newNode() *cobra.Command {
	cfg := node.DefaultConfig()
	var configFile, gossipKey string
	memoryLimit := int64(defaultMemoryLimit)
	var sf sourceFlags
	var trust []string
	cmd := &cobra.Command{
		Use:   "node [--config FILE] [flags]",
		Short: "Run a distribution point",
		Long: `node runs a distribution point (DP): it keeps a bbolt cache in --data, serves
endpoints and peers over gRPC on --grpc, fetches what it lacks from its
--upstream sources (tried in order), and keeps the --product list current.

Every --refresh (plus a random 0-10%) the DP asks upstream for the newest
latest.json of every product it keeps: those of --product and those endpoints
asked for. A newer version is fetched whole before it is announced. For a
product endpoints asked for, that happens at once (an endpoint is waiting);
for a --product product (the "download updates to the repository" task), at
once inside --upstream-window, else at the window's start. --upstream-window
and --upstream-rate limit the download task; 'dpcache prefetch' runs it now.
--prefetch-interval is deprecated: given, it sets how often the --product
products are refreshed (--refresh still sets it for the others), with a
warning.

--gossip-key-file FILE encrypts gossip with the keys of FILE, one base64 key
per line (make one with: head -c 32 /dev/urandom | base64): the first
encrypts, every one decrypts. The file is re-read when it changes and on
SIGHUP (which never stops a DP), so a key is rotated without a restart: add
the new key on every DP, then move it first on every DP, then remove the old
one. A file that cannot be used keeps the keys in use and logs an error.
--gossip-key is deprecated (the key shows in ps).

Every setting comes from the YAML file given with --config (keys are the flag
names, e.g. "upstream: [https://updates.example.com/]"), from DPCACHE_*
environment variables (DPCACHE_UPSTREAM, DPCACHE_DATA, ...), and from flags;
flags win over the environment, which wins over the file.`,
		Args:        noArgs,
		Annotations: map[string]string{"service": "true"},
		RunE: func(cmd *cobra.Command, args []string) error {
			// First: SIGHUP's default action would end the process.
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			if err := applyConfig(cmd.Flags(), configFile); err != nil {
				return fmt.Errorf("node: %w", err)
			}
			applyMemoryLimit(cmd.Flags().Changed("memory-limit"), memoryLimit)
			if gossipKey != "" && cfg.GossipKeyFile != "" {
				return usageError(fmt.Errorf("node: both --gossip-key and --gossip-key-file are given; give only --gossip-key-file"))
			}
			if len(trust) == 0 {
				return usageError(fmt.Errorf("node: no trusted key: give --trust FILE (the vendor's minisign public key)"))
			}
			t, err := manifest.LoadTrust(trust...)
			if err != nil {
				return fmt.Errorf("node: %w", err)
			}
			cfg.Trust = t
			if gossipKey != "" {
				if cfg.GossipKey, err = decodeGossipKey(gossipKey); err != nil {
					return fmt.Errorf("node: %w", err)
				}
				slog.Warn("--gossip-key is deprecated: the key shows in ps; put it in a file (mode 600) and give --gossip-key-file FILE, whose keys can be rotated without a restart")
			}
			cfg.StallTimeout = sf.stall
			if cfg.SourceOptions, err = sf.options(); err != nil {
				return fmt.Errorf("node: %w", err)
			}
			if cfg.Name == "" {
				cfg.Name, _ = os.Hostname()
			}
			cfg.Logger = slog.Default()
			if err := cfg.Validate(); err != nil {
				return usageError(fmt.Errorf("node: %w", err))
			}
			if cfg.PrefetchInterval > 0 {
				cfg.Logger.Warn("--prefetch-interval is deprecated; use --refresh, which now covers the --product products too",
					"prefetch_interval", cfg.PrefetchInterval, "refresh", cfg.Refresh,
					"effect", "--product products are refreshed every --prefetch-interval, the others every --refresh")
			}
			n, err := node.New(cfg)
			if err != nil {
				return err
			}
			return runReloading(cmd.Context(), n, hup)
		},
	}
	f := cmd.Flags()
	f.StringVar(&configFile, "config", "", "YAML configuration file")
	f.StringVar(&cfg.Name, "name", "", "name of this DP (default: the host name)")
	f.StringVar(&cfg.Site, "site", cfg.Site, "site (branch office) this DP serves")
	f.StringVar(&cfg.DataDir, "data", cfg.DataDir, "data directory (holds the bbolt cache)")
	f.StringVar(&cfg.GRPCAddr, "grpc", cfg.GRPCAddr, "gRPC listen address (endpoints and peers)")
	f.StringVar(&cfg.HTTPAddr, "http", cfg.HTTPAddr, "HTTP listen address: status page /, /metrics, /healthz, /readyz, repository /repo/")
	f.StringVar(&cfg.GossipAddr, "gossip", cfg.GossipAddr, "gossip listen address (memberlist, TCP and UDP); empty: no cluster")
	f.StringSliceVar(&cfg.Join, "join", nil, "gossip addresses of DPs to join (retried until in a cluster)")
	f.StringVar(&cfg.GossipKeyFile, "gossip-key-file", "", "file of base64 gossip keys (16, 24 or 32 bytes), one per line: the first encrypts, every one decrypts; re-read on change and on SIGHUP")
	f.StringVar(&gossipKey, "gossip-key", "", "deprecated, use --gossip-key-file (a key here shows in ps): one base64 key (16, 24 or 32 bytes) encrypting gossip")
	f.StringVar(&cfg.Advertise, "advertise", "", "host others use to reach this DP (default: the --grpc host, else this machine's private IP)")
	f.StringVar(&cfg.TLSCertFile, "tls-cert", "", "PEM certificate of this DP (a dp certificate, see 'dpcache ca issue'): gRPC and --http are served over TLS, and the DP presents it to its peers (dialed over TLS: every DP of the cluster must run TLS) and grpcs:// upstreams; re-read when it changes and on SIGHUP")
	f.StringVar(&cfg.TLSKeyFile, "tls-key", "", "PEM private key of --tls-cert")
	f.StringVar(&cfg.ClientCAFile, "client-ca", "", "PEM CA file: gRPC clients must present a certificate it signed (mTLS), HTTP clients may; the certificate's role (dp, endpoint, admin) decides what they may do; without it, AdminService and forwarded requests are honoured only from loopback and the cluster's members")
	f.StringSliceVar(&cfg.Upstream, "upstream", nil, "upstream sources, tried in order: "+sourceSchemes)
	f.StringSliceVar(&trust, "trust", nil, "minisign public key file(s) documents must be signed with")
	f.DurationVar(&cfg.Refresh, "refresh", cfg.Refresh, "how often to ask upstream for the newest latest of every product kept, --product and those endpoints asked for (each wait +0-10% at random)")
	f.StringSliceVar(&cfg.Products, "product", nil, "products to keep current before endpoints ask (the download task): a newer version found by a refresh is fetched whole at once, inside --upstream-window")
	f.DurationVar(&cfg.PrefetchInterval, "prefetch-interval", cfg.PrefetchInterval, "deprecated, use --refresh: how often the --product products are refreshed instead of --refresh (a warning is logged)")
	f.Var(windowFlag{&cfg.UpstreamWindow}, "upstream-window", "local time of day the download task may fetch the --product products, e.g. 22:00-06:00 (may cross midnight); a newer version found outside it is fetched at its start; products endpoints asked for and 'dpcache prefetch' are not limited (default: any time)")
	f.Var(bytesFlag{&cfg.UpstreamRate}, "upstream-rate", "bytes per second the download task (--product) reads from upstream, e.g. 10MiB, 500KiB; not what endpoints or prefetch wait for; databases are fetched before modules (default 0: unlimited)")
	f.Var(bytesFlag{&memoryLimit}, "memory-limit", "soft limit of the DP's memory (Go heap and runtime), e.g. 256MiB: past it the garbage collector works harder instead of the process growing with its connections; 0: none; the GOMEMLIMIT environment variable wins unless this flag is given")
	f.Var(bytesFlag{&cfg.CacheMax}, "cache-max", "cache quota, e.g. 50GiB: past it the oldest versions that are not their product's latest are evicted; the latest and blobs being streamed never are (default 0: unlimited)")
	f.IntVar(&cfg.KeepVersions, "keep-versions", cfg.KeepVersions, "versions of each product kept (the newest); older ones and the blobs only they use are deleted")
	sf.register(f, "upstream sources")
	return cmd
}

// runReloading runs n until ctx ends, reloading it (n.Reload: the gossip
// key file, the TLS certificates) at every signal on hup. A reload that fails is logged by the
// node, which goes on with what it had.
func runReloading(ctx context.Context, n *node.Node, hup <-chan os.Signal) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				slog.Info("SIGHUP: reloading files")
				_ = n.Reload() // logged by the node
			}
		}
	})
	err := n.Run(ctx)
	cancel()
	wg.Wait()
	return err
}

// maxConfigSize bounds the YAML file read by --config.
const maxConfigSize = 1 << 20

// applyConfig fills every flag the command line did not set from the
// DPCACHE_* environment, else from the YAML file.
func applyConfig(flags *pflag.FlagSet, file string) error {
	var data []byte
	if file != "" {
		f, err := os.Open(file)
		if err != nil {
			return fmt.Errorf("config %s: %w", file, err)
		}
		data, err = io.ReadAll(io.LimitReader(f, maxConfigSize+1))
		f.Close()
		if err != nil {
			return fmt.Errorf("config %s: %w", file, err)
		}
		if len(data) > maxConfigSize {
			return fmt.Errorf("config %s: larger than %d bytes; is it the right file?", file, maxConfigSize)
		}
	}
	return applyConfigData(flags, file, data)
}

// applyConfigData is applyConfig with the file's contents.
func applyConfigData(flags *pflag.FlagSet, file string, data []byte) error {
	fileValues := map[string]any{}
	if len(data) > 0 {
		dec := yaml.NewDecoder(bytes.NewReader(data))
		if err := dec.Decode(&fileValues); err != nil && err.Error() != "EOF" {
			return fmt.Errorf("config %s: not valid YAML: %w", file, err)
		}
		for k := range fileValues {
			if k == "config" || flags.Lookup(k) == nil {
				return fmt.Errorf("config %s: unknown setting %q (settings are the flag names of dpcache node --help)", file, k)
			}
		}
	}
	var err error
	flags.VisitAll(func(f *pflag.Flag) {
		if err != nil || f.Changed || f.Name == "config" {
			return
		}
		env := "DPCACHE_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok {
			if e := f.Value.Set(v); e != nil {
				err = fmt.Errorf("%s=%q: %w", env, v, e)
			}
			return
		}
		if v, ok := fileValues[f.Name]; ok {
			if e := f.Value.Set(yamlString(v)); e != nil {
				err = fmt.Errorf("config %s: %s: %w", file, f.Name, e)
			}
		}
	})
	return err
}

// yamlString renders a YAML scalar or list as a flag value.
func yamlString(v any) string {
	switch v := v.(type) {
	case []any:
		parts := make([]string, len(v))
		for i, e := range v {
			parts[i] = fmt.Sprint(e)
		}
		return strings.Join(parts, ",")
	case nil:
		return ""
	default:
		return fmt.Sprint(v)
	}
}

func redactProxy(raw string) string {
	if u, err := url.Parse(raw); err == nil {
		return u.Redacted()
	}
	return "(unparsable)"
}

// decodeGossipKey decodes a base64 gossip key of 16, 24 or 32 bytes.
func decodeGossipKey(s string) ([]byte, error) {
	k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil {
		return nil, usageError(fmt.Errorf("--gossip-key: not base64 (make one with: head -c 32 /dev/urandom | base64): %v", err))
	}
	switch len(k) {
	case 16, 24, 32:
		return k, nil
	}
	return nil, fmt.Errorf("--gossip-key: %d bytes, want 16, 24 or 32 (make one with: head -c 32 /dev/urandom | base64)", len(k))
}

// defaultMemoryLimit is node --memory-limit's default: with it, a DP on
// this project's 2-core machine held RssAnon at 144 MiB under 2,000
// simulated endpoints, 500 at once (341 MiB without), for about 13% fewer
// endpoints per minute (make loadtest).
const defaultMemoryLimit = 160 << 20

// applyMemoryLimit sets the runtime's soft memory limit: the flag's value
// when given, else GOMEMLIMIT when set (the runtime read it), else the
// default. 0 means no limit.
func applyMemoryLimit(given bool, limit int64) {
	if !given && os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	if limit <= 0 {
		debug.SetMemoryLimit(math.MaxInt64)
		return
	}
	debug.SetMemoryLimit(limit)
}
