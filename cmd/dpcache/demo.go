package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/dpcache/dpcache/agent"
	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/node"
	"github.com/dpcache/dpcache/source"
)

func newDemo() *cobra.Command {
	var endpoints int
	var verbose bool
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run the whole system in one process, on loopback, and print what happened",
		Long: `demo generates a sample product (antivirus databases and modules, tens of
MiB), publishes two signed versions into a repository, serves it over HTTP
as the vendor's origin, runs a distribution point in front of it, and updates
several endpoints from the DP twice. It prints the versions installed, the
bytes the origin served and the bytes the endpoints received. Everything runs
on 127.0.0.1 in a temporary folder that is removed at the end.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if endpoints < 1 || endpoints > 100 {
				return usageError(fmt.Errorf("demo: --endpoints %d: want 1 to 100", endpoints))
			}
			logger := slog.New(slog.NewTextHandler(io.Discard, nil))
			if verbose {
				logger = slog.Default()
			}
			return runDemo(cmd.Context(), cmd.OutOrStdout(), endpoints, logger)
		},
	}
	cmd.Flags().IntVar(&endpoints, "endpoints", 12, "number of endpoints to update")
	cmd.Flags().BoolVar(&verbose, "verbose", false, "show the distribution point's logs")
	return cmd
}

const demoProduct = "avbases"

func runDemo(ctx context.Context, out io.Writer, endpoints int, logger *slog.Logger) error {
	tmp, err := os.MkdirTemp("", "dpcache-demo-")
	if err != nil {
		return fmt.Errorf("demo: temporary folder: %w", err)
	}
	defer os.RemoveAll(tmp)
	say := func(format string, args ...any) { fmt.Fprintf(out, format+"\n", args...) }

	// The vendor: a key pair and a product.
	key, pub, err := manifest.GenerateKey()
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	trust, err := manifest.NewTrust(pub)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	repo, src := filepath.Join(tmp, "repo"), filepath.Join(tmp, "src")
	rng := rand.New(rand.NewChaCha8([32]byte{'d', 'p', 'c', 'a', 'c', 'h', 'e'}))
	files := map[string]int{
		"databases/av-base-01.dat": 6 << 20, "databases/av-base-02.dat": 6 << 20,
		"databases/av-base-03.dat": 6 << 20, "databases/heuristics.dat": 3 << 20,
		"databases/whitelist.dat": 2 << 20, "databases/index.xml": 64 << 10,
		"modules/engine.bin": 8 << 20, "modules/updater.bin": 3 << 20,
	}
	for name, size := range files {
		if err := writeRandom(filepath.Join(src, name), size, rng); err != nil {
			return fmt.Errorf("demo: %w", err)
		}
	}
	publish := func(version string) (*manifest.PublishResult, error) {
		return manifest.Publish(manifest.PublishOptions{Repo: repo, Product: demoProduct, Version: version, Key: key}, src)
	}
	v1, err := publish("2026.11.27-1")
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	say("vendor published %s %s (serial %d): %d files, %s", demoProduct, v1.Manifest.Version, v1.Manifest.Serial, len(v1.Manifest.Files), formatBytes(v1.Manifest.Size()))

	// The vendor's origin server.
	olis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("demo: origin listener: %w", err)
	}
	orig := newOrigin(repo)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return orig.serve(gctx, olis) })
	originURL := "http://" + olis.Addr().String() + "/"
	say("origin serving %s at %s", repo, originURL)

	// Three distribution points in two sites, gossiping on loopback.
	type dpInfo struct {
		node *node.Node
		site string
	}
	var dps []dpInfo
	var join []string
	for _, d := range []struct{ name, site string }{{"dp-paris-1", "paris"}, {"dp-paris-2", "paris"}, {"dp-lyon-1", "lyon"}} {
		ncfg := node.DefaultConfig()
		ncfg.Name, ncfg.Site, ncfg.DataDir = d.name, d.site, filepath.Join(tmp, d.name)
		ncfg.GRPCAddr, ncfg.HTTPAddr, ncfg.GossipAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
		ncfg.Join = join
		ncfg.Upstream, ncfg.Trust = []string{originURL}, trust
		ncfg.Refresh, ncfg.Logger = 300*time.Millisecond, logger.With("dp", d.name)
		dp, err := node.New(ncfg)
		if err != nil {
			cancel()
			g.Wait()
			return fmt.Errorf("demo: %w", err)
		}
		g.Go(func() error { return dp.Run(gctx) })
		dps = append(dps, dpInfo{dp, d.site})
		join = append(join, dp.GossipAddr())
		say("distribution point %s (site %s) serving at grpc://%s", d.name, d.site, dp.GRPCAddr())
	}

	runErr := func() error {
		// Every DP must see the others before the endpoints come.
		if err := waitFor(gctx, "the DPs to form a cluster", func() bool {
			for _, d := range dps {
				if len(d.node.Members()) != len(dps) {
					return false
				}
			}
			return true
		}); err != nil {
			return err
		}
		// Endpoints: 8 in paris, 4 in lyon; each asks a DP of its site for
		// the site's DPs (--discover) and uses them in that order.
		type endpoint struct {
			name, site string
			srcs       []source.Source
		}
		var eps []endpoint
		for i := range endpoints {
			site, dpi := "paris", i%2
			if i%3 == 2 {
				site, dpi = "lyon", 2
			}
			first, err := source.NewGRPC(dps[dpi].node.GRPCAddr(), source.DefaultOptions())
			if err != nil {
				return err
			}
			defer first.Close()
			srcs := []source.Source{first}
			if listed, err := first.ListSources(gctx, site); err == nil {
				for _, l := range listed {
					if l.Site != site || l.GRPCAddr == dps[dpi].node.GRPCAddr() {
						continue
					}
					s, err := source.NewGRPC(l.GRPCAddr, source.DefaultOptions())
					if err != nil {
						return err
					}
					defer s.Close()
					srcs = append(srcs, s)
				}
			}
			eps = append(eps, endpoint{fmt.Sprintf("endpoint-%02d", i+1), site, srcs})
		}
		delivered := map[string]int64{}
		round := func(title string) error {
			say("\n%s: %d endpoints update from their site's DPs at once", title, len(eps))
			results := make([]*agent.Result, len(eps))
			eg, ectx := errgroup.WithContext(gctx)
			for i, ep := range eps {
				eg.Go(func() error {
					acfg := agent.DefaultConfig()
					acfg.Sources, acfg.Trust = ep.srcs, trust
					acfg.Product, acfg.Dir = demoProduct, filepath.Join(tmp, ep.name)
					acfg.EndpointID, acfg.Hostname, acfg.Site = ep.name, ep.name, ep.site
					r, err := agent.Update(ectx, acfg)
					results[i] = r
					return err
				})
			}
			if err := eg.Wait(); err != nil {
				return err
			}
			tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "  endpoint\tsite\tstatus\tversion\tserial\tfiles changed\tdownloaded\tfrom")
			for i, r := range results {
				fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\n", eps[i].name, eps[i].site, r.Status, r.Version, r.Serial, r.FilesChanged, formatBytes(r.BytesDownloaded), r.Source)
				delivered[eps[i].site] += r.BytesDownloaded
			}
			return tw.Flush()
		}
		if err := round("round 1 (cold DPs)"); err != nil {
			return err
		}

		// A new version: two database files and one module change.
		for _, name := range []string{"databases/av-base-02.dat", "databases/index.xml", "modules/updater.bin"} {
			if err := writeRandom(filepath.Join(src, name), files[name], rng); err != nil {
				return err
			}
		}
		v2, err := publish("2026.11.27-2")
		if err != nil {
			return err
		}
		say("\nvendor published %s (serial %d): %d new blobs, %s", v2.Manifest.Version, v2.Manifest.Serial, v2.BlobsWritten, formatBytes(v2.BytesWritten))
		for _, d := range dps {
			dpSrc, err := source.NewGRPC(d.node.GRPCAddr(), source.DefaultOptions())
			if err != nil {
				return err
			}
			err = waitForSerial(gctx, dpSrc, trust, v2.Manifest.Serial)
			dpSrc.Close()
			if err != nil {
				return err
			}
		}
		say("every DP fetched it whole in the background (each blob once per site) and now announces it")
		if err := round("round 2 (incremental)"); err != nil {
			return err
		}

		say("\ninternet link per site (what the DPs fetched upstream) against what the site's endpoints received:")
		tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  site\tDPs\tinternet\tfrom peers\tdelivered\tsaved")
		for _, site := range []string{"paris", "lyon"} {
			var up, peer int64
			n := 0
			for _, d := range dps {
				if d.site == site {
					up += d.node.Traffic().UpstreamBytes
					peer += d.node.Traffic().PeerBytes
					n++
				}
			}
			fmt.Fprintf(tw, "  %s\t%d\t%s\t%s\t%s\t%.1fx\n", site, n, formatBytes(up), formatBytes(peer), formatBytes(delivered[site]), float64(delivered[site])/float64(max(up, 1)))
		}
		tw.Flush()
		say("  (the origin sent %s in all for two versions of %s and %s)", formatBytes(orig.sent.Load()), formatBytes(v1.Manifest.Size()), formatBytes(v2.Manifest.Size()))

		rb, err := agent.Rollback(filepath.Join(tmp, "endpoint-01"), demoProduct)
		if err != nil {
			return err
		}
		say("\nendpoint-01 rolled back to %s (serial %d) on the admin's command, and held there until dpcache unhold", rb.Version, rb.Serial)

		return nil
	}()
	cancel()
	if err := g.Wait(); err != nil && !errors.Is(err, context.Canceled) && runErr == nil {
		runErr = err
	}
	if runErr != nil {
		return fmt.Errorf("demo: %w", runErr)
	}
	return nil
}

// waitFor polls cond until it holds, for at most a minute.
func waitFor(ctx context.Context, what string, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("timed out waiting for %s", what)
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// waitForSerial polls the DP until its latest has at least serial.
func waitForSerial(ctx context.Context, src source.Source, trust *manifest.Trust, serial uint64) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		s, err := src.Latest(ctx, demoProduct)
		if err == nil {
			if l, err := trust.VerifyLatest(s.Data, s.Signature); err == nil && l.Serial >= serial {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the DP did not announce serial %d within a minute", serial)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

var writeMu sync.Mutex

func writeRandom(path string, size int, rng *rand.Rand) error {
	writeMu.Lock()
	defer writeMu.Unlock()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	b := make([]byte, size)
	for i := 0; i+8 <= len(b); i += 8 {
		v := rng.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return os.WriteFile(path, b, 0o644)
}
