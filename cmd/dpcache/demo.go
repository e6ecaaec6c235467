package main

import (
	"context"
	crand "crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/dpcache/dpcache/agent"
	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/node"
	"github.com/dpcache/dpcache/pki"
	"github.com/dpcache/dpcache/source"
)

func newDemo() *cobra.Command {
	var endpoints int
	var verbose, secure bool
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run the whole system in one process, on loopback, and print what happened",
		Long: `demo generates a sample product (antivirus databases and modules, 34 MiB),
publishes version 1.0 into a signed repository, serves it over HTTP as the
vendor's origin, and runs three distribution points in two sites (two in
paris, one in lyon) that gossip with each other. Endpoints of both sites
update from their site's DPs; then the vendor publishes 1.1, which changes
3 of the 8 files, and the endpoints update again. It prints what each
endpoint installed, and for the second update the bytes that changed and how
many of them crossed the internet link against the LAN.

Everything runs in this process on 127.0.0.1, in a temporary folder under
$TMPDIR (/tmp by default) that is removed at the end, also when the demo is
interrupted (Ctrl-C, SIGTERM, SIGHUP); a second interrupt stops at once,
still removing the folder.

With --secure the site is run as on a hostile LAN: a site CA issues a dp
certificate to each DP and an endpoint certificate to each endpoint; the DPs
serve gRPC and HTTP over TLS, require client certificates (mTLS) and encrypt
their gossip with a key file; endpoints update over grpcs:// and report
under their certificate's name.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if endpoints < 1 || endpoints > 100 {
				return usageError(fmt.Errorf("demo: --endpoints %d: want 1 to 100", endpoints))
			}
			logger := slog.New(slog.NewTextHandler(io.Discard, nil))
			if verbose {
				logger = slog.Default()
			}
			return runDemo(cmd.Context(), cmd.OutOrStdout(), demoOptions{endpoints: endpoints, secure: secure}, logger)
		},
	}
	cmd.Flags().IntVar(&endpoints, "endpoints", 12, "number of endpoints to update")
	cmd.Flags().BoolVar(&verbose, "verbose", false, "show the distribution point's logs")
	cmd.Flags().BoolVar(&secure, "secure", false, "run the site with a CA, TLS and client certificates on every link, and an encrypted gossip")
	return cmd
}

const demoProduct = "avbases"

// Demo versions: plain names, so that the output is the same every day.
const (
	demoV1 = "1.0"
	demoV2 = "1.1"
)

// demoOptions are the demo's flags.
type demoOptions struct {
	endpoints int
	secure    bool
}

func runDemo(ctx context.Context, out io.Writer, opts demoOptions, logger *slog.Logger) error {
	tmp, err := os.MkdirTemp("", "dpcache-demo-")
	if err != nil {
		return fmt.Errorf("demo: temporary folder: %w", err)
	}
	defer os.RemoveAll(tmp) // also on a panic
	ctx, stopSignals := demoSignals(ctx, tmp)
	err = demo(ctx, out, tmp, opts, logger)
	interrupted := ctx.Err() != nil
	stopSignals()
	if rerr := os.RemoveAll(tmp); rerr != nil {
		return fmt.Errorf("demo: remove the temporary folder: %w (remove it by hand)", rerr)
	}
	switch {
	case interrupted:
		// Whatever failed first, the signal is why.
		return fmt.Errorf("demo: interrupted (temporary folder %s removed)", tmp)
	case err != nil:
		return fmt.Errorf("demo: %w", err)
	}
	return nil
}

// demoSignals returns ctx cancelled by SIGINT, SIGTERM or SIGHUP (a closed
// terminal), so that the demo stops and runDemo removes tmp. A second
// signal while the demo stops removes tmp and exits at once. The returned
// func stops watching for signals.
func demoSignals(ctx context.Context, tmp string) (context.Context, func()) {
	ctx, cancel := context.WithCancel(ctx)
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case <-sigs:
			cancel()
		case <-done:
			return
		}
		select {
		case <-sigs:
			os.RemoveAll(tmp) // the DPs' open files go with it: nothing else reads them
			fmt.Fprintf(os.Stderr, "dpcache: demo: interrupted twice: stopped at once (temporary folder %s removed)\n", tmp)
			os.Exit(exitFailure)
		case <-done:
		}
	}()
	return ctx, func() {
		signal.Stop(sigs)
		close(done)
		wg.Wait()
		cancel()
	}
}

// demo runs the demo in tmp; runDemo owns tmp and the signals.
func demo(ctx context.Context, out io.Writer, tmp string, opts demoOptions, logger *slog.Logger) error {
	endpoints := opts.endpoints
	say := func(format string, args ...any) { fmt.Fprintf(out, format+"\n", args...) }

	// The vendor: a key pair and a product.
	key, pub, err := manifest.GenerateKey()
	if err != nil {
		return err
	}
	trust, err := manifest.NewTrust(pub)
	if err != nil {
		return err
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
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := writeRandom(filepath.Join(src, name), size, rng); err != nil {
			return err
		}
	}
	// Whole files, unlike `dpcache publish` by default: 1.1 rewrites its
	// changed files whole, so chunks would save nothing, and their lists
	// (about 40 KB per manifest) would only blur the internet figure,
	// which is the changed bytes once per site.
	publish := func(version string) (*manifest.PublishResult, error) {
		return manifest.Publish(manifest.PublishOptions{Repo: repo, Product: demoProduct, Version: version, Key: key}, src)
	}
	v1, err := publish(demoV1)
	if err != nil {
		return err
	}
	say("vendor published %s %s (serial %d): %d files, %s", demoProduct, v1.Manifest.Version, v1.Manifest.Serial, len(v1.Manifest.Files), formatBytes(v1.Manifest.Size()))

	// The vendor's origin server.
	olis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("origin listener: %w", err)
	}
	orig := newOrigin(repo)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return orig.serve(gctx, olis) })
	originURL := "http://" + olis.Addr().String() + "/"
	say("origin serving %s at %s", repo, originURL)

	// With --secure: a site CA, and a gossip key file.
	var sec *demoPKI
	if opts.secure {
		if sec, err = newDemoPKI(tmp); err != nil {
			cancel()
			g.Wait()
			return err
		}
		say("site CA in %s: every DP and endpoint gets a certificate; TLS and client certificates on every link, gossip encrypted", sec.dir)
	}

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
		if sec != nil {
			if err := sec.secureDP(&ncfg); err != nil {
				cancel()
				g.Wait()
				return err
			}
		}
		dp, err := node.New(ncfg)
		if err != nil {
			cancel()
			g.Wait()
			return err
		}
		g.Go(func() error { return dp.Run(gctx) })
		dps = append(dps, dpInfo{dp, d.site})
		join = append(join, dp.GossipAddr())
		say("distribution point %s (site %s) serving at %s://%s", d.name, d.site, sec.scheme(), dp.GRPCAddr())
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
		// Endpoints: two in paris for one in lyon; each asks a DP of its
		// site for the site's DPs (--discover) and uses them in that order.
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
			name := fmt.Sprintf("endpoint-%02d", i+1)
			sopts, err := sec.endpointOptions(name)
			if err != nil {
				return err
			}
			parsed, err := source.Parse(sec.scheme()+"://"+dps[dpi].node.GRPCAddr(), sopts)
			if err != nil {
				return err
			}
			first := parsed.(*source.GRPC) // a grpc(s):// source is a DP
			defer first.Close()
			srcs := []source.Source{first}
			if listed, err := first.ListSources(gctx, site); err == nil {
				for _, l := range listed {
					if l.Site != site || l.GRPCAddr == dps[dpi].node.GRPCAddr() {
						continue
					}
					s, err := source.Parse(sec.scheme()+"://"+l.GRPCAddr, sopts)
					if err != nil {
						return err
					}
					defer s.Close()
					srcs = append(srcs, s)
				}
			}
			eps = append(eps, endpoint{name, site, srcs})
		}
		// round updates every endpoint at once and returns the bytes each
		// site's endpoints downloaded.
		round := func(title string) (map[string]int64, error) {
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
				return nil, err
			}
			delivered := map[string]int64{}
			tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "  endpoint\tsite\tstatus\tversion\tserial\tfiles changed\tdownloaded\tfrom")
			for i, r := range results {
				fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\n", eps[i].name, eps[i].site, r.Status, r.Version, r.Serial, r.FilesChanged, formatBytes(r.BytesDownloaded), r.Source)
				delivered[eps[i].site] += r.BytesDownloaded
			}
			return delivered, tw.Flush()
		}
		// siteTraffic sums the DPs' byte counters per site.
		siteTraffic := func() map[string]node.Traffic {
			t := map[string]node.Traffic{}
			for _, d := range dps {
				dt, st := d.node.Traffic(), t[d.site]
				st.UpstreamBytes += dt.UpstreamBytes
				st.PeerBytes += dt.PeerBytes
				t[d.site] = st
			}
			return t
		}
		if _, err := round("round 1 (cold DPs)"); err != nil {
			return err
		}

		// A new version: two database files and one module change.
		for _, name := range []string{"databases/av-base-02.dat", "databases/index.xml", "modules/updater.bin"} {
			if err := writeRandom(filepath.Join(src, name), files[name], rng); err != nil {
				return err
			}
		}
		before, sentBefore := siteTraffic(), orig.sent.Load()
		v2, err := publish(demoV2)
		if err != nil {
			return err
		}
		changedFiles, changed := manifestChange(v1.Manifest, v2.Manifest)
		say("\nvendor published %s (serial %d): %d of %d files changed, %s of %s",
			v2.Manifest.Version, v2.Manifest.Serial, changedFiles, len(v2.Manifest.Files), formatBytes(changed), formatBytes(v2.Manifest.Size()))
		checkOpts, err := sec.endpointOptions("demo-check")
		if err != nil {
			return err
		}
		for _, d := range dps {
			dpSrc, err := source.Parse(sec.scheme()+"://"+d.node.GRPCAddr(), checkOpts)
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
		delivered, err := round("round 2 (incremental)")
		if err != nil {
			return err
		}

		after := siteTraffic()
		say("\nthe update from %s to %s: %s changed; what moved it, per site:", v1.Manifest.Version, v2.Manifest.Version, formatBytes(changed))
		tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  site\tDPs\tendpoints\tinternet (origin to DPs)\tLAN (DP to DP)\tLAN (DPs to endpoints)")
		var lan int64
		for _, site := range []string{"paris", "lyon"} {
			nDPs, nEps := 0, 0
			for _, d := range dps {
				if d.site == site {
					nDPs++
				}
			}
			for _, ep := range eps {
				if ep.site == site {
					nEps++
				}
			}
			peer := after[site].PeerBytes - before[site].PeerBytes
			lan += peer + delivered[site]
			fmt.Fprintf(tw, "  %s\t%d\t%d\t%s\t%s\t%s\n", site, nDPs, nEps,
				formatBytes(after[site].UpstreamBytes-before[site].UpstreamBytes), formatBytes(peer), formatBytes(delivered[site]))
		}
		tw.Flush()
		internet, direct := orig.sent.Load()-sentBefore, changed*int64(len(eps))
		say("  the internet link carried %s (the %s changed, once per site) instead of %s without DPs; the LAN carried %s",
			formatBytes(internet), formatBytes(changed), formatBytes(direct), formatBytes(lan))

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
	return runErr
}

// manifestChange returns how many of to's files are not in from (by
// content), and their bytes: what an endpoint holding from must download.
func manifestChange(from, to *manifest.Manifest) (files int, bytes int64) {
	had := map[string]bool{}
	for _, f := range from.Files {
		had[f.SHA256] = true
	}
	for _, f := range to.Files {
		if !had[f.SHA256] {
			files++
			bytes += f.Size
		}
	}
	return files, bytes
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

// demoPKI is the --secure demo's site CA and gossip key file, in dir.
type demoPKI struct {
	dir     string
	keyFile string
}

func newDemoPKI(tmp string) (*demoPKI, error) {
	p := &demoPKI{dir: filepath.Join(tmp, "site-ca"), keyFile: filepath.Join(tmp, "gossip.keys")}
	if err := pki.InitCA(p.dir, "dpcache demo site CA"); err != nil {
		return nil, err
	}
	key := make([]byte, 32)
	if _, err := crand.Read(key); err != nil {
		return nil, fmt.Errorf("gossip key: %w", err)
	}
	if err := os.WriteFile(p.keyFile, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("gossip key file: %w", err)
	}
	return p, nil
}

// scheme is the scheme endpoints reach DPs with.
func (p *demoPKI) scheme() string {
	if p == nil {
		return "grpc"
	}
	return "grpcs"
}

func (p *demoPKI) ca() string { return filepath.Join(p.dir, pki.CACertFile) }

// secureDP gives a DP its dp certificate (valid for 127.0.0.1), mTLS with
// the site CA, and the gossip key file.
func (p *demoPKI) secureDP(c *node.Config) error {
	prefix := filepath.Join(p.dir, c.Name)
	if err := pki.Issue(p.dir, pki.IssueRequest{Name: c.Name, Role: pki.RoleDP, Hosts: []string{"127.0.0.1"}}, prefix); err != nil {
		return err
	}
	c.TLSCertFile, c.TLSKeyFile, c.ClientCAFile = prefix+".pem", prefix+".key", p.ca()
	c.GossipKeyFile = p.keyFile
	return nil
}

// endpointOptions are the source options of endpoint name: plain ones, or
// with --secure its endpoint certificate and the site CA.
func (p *demoPKI) endpointOptions(name string) (source.Options, error) {
	opts := source.DefaultOptions()
	if p == nil {
		return opts, nil
	}
	prefix := filepath.Join(p.dir, name)
	if err := pki.Issue(p.dir, pki.IssueRequest{Name: name, Role: pki.RoleEndpoint}, prefix); err != nil {
		return opts, err
	}
	opts.CAFile, opts.CertFile, opts.KeyFile = p.ca(), prefix+".pem", prefix+".key"
	return opts, nil
}
