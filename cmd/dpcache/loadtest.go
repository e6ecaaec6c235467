package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/dpcache/dpcache/loadtest"
	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/source"
)

// loadtestJSON is `dpcache loadtest --json`: the keys of docs/design.md
// first, then more.
type loadtestJSON struct {
	Endpoints int     `json:"endpoints"`
	Updated   int     `json:"updated"`
	Errors    int     `json:"errors"`
	Seconds   float64 `json:"seconds"`
	P50ms     float64 `json:"p50_ms"`
	P99ms     float64 `json:"p99_ms"`

	MaxMS            float64        `json:"max_ms"`
	FirstP50ms       float64        `json:"first_p50_ms"`
	FirstP99ms       float64        `json:"first_p99_ms"`
	PerMinute        float64        `json:"endpoints_per_minute"`
	Bytes            int64          `json:"bytes"`
	Product          string         `json:"product"`
	From             string         `json:"from"` // "" for a fresh install
	Version          string         `json:"version"`
	Serial           uint64         `json:"serial"`
	BlobsPerEndpoint int            `json:"blobs_per_endpoint"`
	BytesPerEndpoint int64          `json:"bytes_per_endpoint"`
	ErrorKinds       map[string]int `json:"error_kinds,omitempty"`
	// The DP's memory, when it runs on this machine.
	NodePID           int   `json:"node_pid,omitempty"`
	RssAnonStartBytes int64 `json:"rss_anon_start_bytes,omitempty"`
	RssAnonPeakBytes  int64 `json:"rss_anon_peak_bytes,omitempty"`
	VmRSSPeakBytes    int64 `json:"vm_rss_peak_bytes,omitempty"`
	// This process's own.
	LoadtestRssAnonPeakBytes int64 `json:"loadtest_rss_anon_peak_bytes,omitempty"`
}

func toLoadtestJSON(s *loadtest.Summary) loadtestJSON {
	ms := func(d time.Duration) float64 { return math.Round(float64(d)/float64(time.Millisecond)*10) / 10 }
	out := loadtestJSON{
		Endpoints: s.Endpoints, Updated: s.Updated, Errors: s.Errors,
		Seconds: math.Round(s.Elapsed.Seconds()*1000) / 1000, P50ms: ms(s.P50), P99ms: ms(s.P99), MaxMS: ms(s.Max),
		FirstP50ms: ms(s.FirstP50), FirstP99ms: ms(s.FirstP99), PerMinute: math.Round(s.PerMinute()*10) / 10,
		Bytes: s.Bytes, Product: s.Product, From: s.From, Version: s.Version, Serial: s.Serial,
		BlobsPerEndpoint: s.BlobsPerEndpoint, BytesPerEndpoint: s.BytesPerEndpoint,
		LoadtestRssAnonPeakBytes: s.Self.RssAnonPeak,
	}
	if len(s.ErrorKinds) > 0 {
		out.ErrorKinds = map[string]int{}
		for _, k := range s.ErrorKinds {
			out.ErrorKinds[k.Kind] = k.Count
		}
	}
	if s.Node != nil {
		out.NodePID, out.RssAnonStartBytes, out.RssAnonPeakBytes, out.VmRSSPeakBytes = s.Node.PID, s.Node.RssAnonStart, s.Node.RssAnonPeak, s.Node.VmRSSPeak
	}
	return out
}

func newLoadtest() *cobra.Command {
	cfg := loadtest.DefaultConfig()
	var nodeAddr string
	var trust []string
	var sf sourceFlags
	var asJSON bool
	timeout := source.DefaultOptions().Timeout
	cmd := &cobra.Command{
		Use:   "loadtest --node ADDR --product P [--endpoints N] [--concurrency C] [--from VERSION] [--json]",
		Short: "Simulate many endpoints updating through a distribution point",
		Long: `loadtest simulates N endpoints updating product P through the DP at ADDR (its
gRPC address), at most C at once, to size a DP. Each endpoint opens its own
connection and does what an update does on the wire: GetLatest, GetManifest,
ReadBlob of each blob it lacks, and ReportStatus under its own id
(--id-prefix and a number) with the result "updated", so the DP's inventory
(dpcache endpoints) lists it at the new version. Endpoints start as if
--from VERSION were installed and read only the files that changed since;
without --from they read every file (a fresh install).

A simulated endpoint is cheap: it writes nothing to disk and drops the bytes
it reads (--verify hashes them); signatures are checked with --trust once per
distinct document, not per endpoint (without --trust they are not checked).

It prints endpoints per minute, the time to update (start to report, p50 and
p99), the time to the first answer (GetLatest, connecting included), errors
by step and kind, the bytes moved, and, when the DP runs on this machine
(found by its listening port, or --node-pid), the peak of its RssAnon and
VmRSS sampled every 200 ms. It exits 1 when an endpoint failed.

With --cert, a DP that requires client certificates takes reports only under
the certificate's name: every endpoint then reports under it.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := requireFlags(cmd, "node", "product"); err != nil {
				return err
			}
			if err := cfg.Validate(); err != nil {
				return usageError(fmt.Errorf("loadtest: %w (see %s --help)", err, cmd.CommandPath()))
			}
			if timeout <= 0 {
				return usageError(fmt.Errorf("loadtest: --timeout %v must be positive", timeout))
			}
			if len(trust) > 0 {
				t, err := manifest.LoadTrust(trust...)
				if err != nil {
					return fmt.Errorf("loadtest: %w", err)
				}
				cfg.Trust = t
			}
			name, err := sf.clientName()
			if err != nil {
				return fmt.Errorf("loadtest: %w", err)
			}
			cfg.ID = name
			cfg.Hostname, _ = os.Hostname()
			opts, err := sf.options()
			if err != nil {
				return fmt.Errorf("loadtest: %w", err)
			}
			// One connection per endpoint: the files are read once, and
			// each connection reads through a small buffer.
			opts.Timeout, opts.LeanConns = timeout, true
			if opts, err = opts.LoadTLS(); err != nil {
				return fmt.Errorf("loadtest: %w", err)
			}
			dp, err := dialDPWith(nodeAddr, opts)
			if err != nil {
				return fmt.Errorf("loadtest: %w", err)
			}
			dp.Close()
			hostPort := nodeAddr[strings.Index(nodeAddr, "://")+len("://"):]
			if !strings.Contains(nodeAddr, "://") {
				hostPort = nodeAddr
			}
			nodeNote := ""
			if cfg.NodePID == 0 {
				if cfg.NodePID, err = loadtest.FindListener(hostPort); err != nil {
					nodeNote = err.Error()
				}
			}
			sum, err := loadtest.Run(cmd.Context(), cfg, func() (loadtest.Conn, error) { return dialDPWith(nodeAddr, opts) })
			if errors.Is(err, loadtest.ErrSetup) {
				return fmt.Errorf("loadtest: %w", dpHint(err, nodeAddr))
			}
			if sum == nil {
				return fmt.Errorf("loadtest: %w", err)
			}
			if asJSON {
				if err := json.NewEncoder(cmd.OutOrStdout()).Encode(toLoadtestJSON(sum)); err != nil {
					return err
				}
			} else {
				printLoadtest(cmd.OutOrStdout(), sum, nodeAddr, cfg.Concurrency, nodeNote)
			}
			if err != nil {
				return fmt.Errorf("loadtest: interrupted after %d of %d endpoints", sum.Endpoints, cfg.Endpoints)
			}
			if sum.Errors > 0 {
				k := sum.ErrorKinds[0]
				return fmt.Errorf("loadtest: %d of %d endpoints failed; most often %s (%d), as in: %s", sum.Errors, sum.Endpoints, k.Kind, k.Count, k.Example)
			}
			return nil
		},
	}
	sf.registerAdmin(cmd.Flags())
	f := cmd.Flags()
	f.StringVar(&nodeAddr, "node", "", "gRPC address of the DP: host:port, grpc://host:port or grpcs://host:port (TLS)")
	f.StringVar(&cfg.Product, "product", "", "product the endpoints update")
	f.IntVar(&cfg.Endpoints, "endpoints", cfg.Endpoints, "how many endpoints to simulate")
	f.IntVar(&cfg.Concurrency, "concurrency", cfg.Concurrency, "how many endpoints update at once (each on its own connection)")
	f.StringVar(&cfg.From, "from", "", "the version the endpoints have installed: they read only the files that changed since (default: none, a fresh install)")
	f.StringSliceVar(&trust, "trust", nil, "minisign public key file(s) to check the documents' signatures with, once per distinct document (default: not checked)")
	f.BoolVar(&cfg.Verify, "verify", false, "check each blob's SHA-256 as it is read (costs this machine's CPU)")
	f.StringVar(&cfg.IDPrefix, "id-prefix", cfg.IDPrefix, "endpoint ids are this prefix and a number; a second run with the same prefix replaces the first one's reports")
	f.IntVar(&cfg.NodePID, "node-pid", 0, "process id of the DP, when it runs on this machine (default: found by its listening port)")
	f.DurationVar(&timeout, "timeout", timeout, "how long an endpoint waits for a DP's answer (a request's, or a blob's first bytes), as an update does")
	f.BoolVar(&asJSON, "json", false, `print JSON: {"endpoints", "updated", "errors", "seconds", "p50_ms", "p99_ms", "first_p99_ms", "endpoints_per_minute", "rss_anon_peak_bytes", ...}`)
	return cmd
}

// printLoadtest prints a run's summary for people.
func printLoadtest(w io.Writer, s *loadtest.Summary, nodeAddr string, concurrency int, nodeNote string) {
	d := func(v time.Duration) string { return v.Round(time.Millisecond).String() }
	what := "a fresh install"
	if s.From != "" {
		what = "from " + s.From
	}
	fmt.Fprintf(w, "%s through %s: %d endpoints, %d at once, %s to %s (serial %d): %s, %s each\n",
		s.Product, nodeAddr, s.Endpoints, min(concurrency, max(s.Endpoints, 1)), what, s.Version, s.Serial,
		plural(s.BlobsPerEndpoint, "blob"), formatBytes(s.BytesPerEndpoint))
	fmt.Fprintf(w, "updated %d, errors %d, in %s: %.0f endpoints/min\n", s.Updated, s.Errors, d(s.Elapsed), s.PerMinute())
	fmt.Fprintf(w, "time to update: p50 %s, p99 %s, max %s\n", d(s.P50), d(s.P99), d(s.Max))
	fmt.Fprintf(w, "first answer:   p50 %s, p99 %s\n", d(s.FirstP50), d(s.FirstP99))
	checks := "signatures not checked (--trust)"
	if s.Signatures {
		checks = "signatures checked once per document"
	}
	if s.Verified {
		checks += ", blob digests checked"
	}
	fmt.Fprintf(w, "moved %s (%s)\n", formatBytes(s.Bytes), checks)
	if s.Node != nil {
		fmt.Fprintf(w, "DP memory (pid %d): RssAnon peak %s (%s at the start), VmRSS peak %s\n",
			s.Node.PID, formatBytes(s.Node.RssAnonPeak), formatBytes(s.Node.RssAnonStart), formatBytes(s.Node.VmRSSPeak))
	} else if nodeNote != "" {
		fmt.Fprintf(w, "DP memory: not sampled (%s; give --node-pid)\n", nodeNote)
	}
	if s.Self.Samples > 0 {
		fmt.Fprintf(w, "loadtest memory: RssAnon peak %s\n", formatBytes(s.Self.RssAnonPeak))
	}
	for _, k := range s.ErrorKinds {
		fmt.Fprintf(w, "error %s: %d, first: %s\n", k.Kind, k.Count, k.Example)
	}
}
