package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/dpcache/dpcache/pki"
	"github.com/dpcache/dpcache/source"
	"github.com/dpcache/dpcache/source/failover"
)

// sourceSchemes lists, for help texts, every kind of source that
// source.Parse accepts.
const sourceSchemes = "http://, https://, ftp://, file:// or a folder, grpc:// or grpcs:// (a DP)"

// sourceFlags are the flags that say how sources are reached.
type sourceFlags struct {
	proxy, noProxy, ca string
	cert, key          string // client certificate (registerClientCert)
	stall              time.Duration
}

// registerClientCert adds --cert and --key, the client certificate shown
// to DPs that require one (--client-ca).
func (sf *sourceFlags) registerClientCert(f *pflag.FlagSet) {
	f.StringVar(&sf.cert, "cert", "", "PEM client certificate for grpcs:// and https:// sources that ask for one (a DP with --client-ca); see 'dpcache ca issue'")
	f.StringVar(&sf.key, "key", "", "PEM private key of --cert")
}

// registerAdmin adds the flags of a command that talks to one DP's
// AdminService: --ca, --cert and --key.
func (sf *sourceFlags) registerAdmin(f *pflag.FlagSet) {
	f.StringVar(&sf.ca, "ca", "", "PEM file of extra CA certificates verifying a grpcs:// DP")
	sf.registerClientCert(f)
}

// clientName returns the common name of --cert ("" without --cert): the
// name a DP with --client-ca knows this client by.
func (sf *sourceFlags) clientName() (string, error) {
	if sf.cert == "" || sf.key == "" {
		return "", nil
	}
	kp, err := pki.LoadKeyPair(sf.cert, sf.key, nil)
	if err != nil {
		return "", usageError(fmt.Errorf("--cert/--key: %w", err))
	}
	name, _ := pki.Identify(kp.Certificate().Leaf)
	return name, nil
}

func (sf *sourceFlags) register(f *pflag.FlagSet, what string) {
	f.StringVar(&sf.proxy, "proxy", "", "HTTP proxy for http(s) "+what+" (http://[user:pass@]host:port); without it the standard proxy environment variables apply; FTP never goes through it")
	f.StringVar(&sf.noProxy, "no-proxy", "", "hosts, domains and CIDRs reached without --proxy (comma-separated, as NO_PROXY)")
	f.StringVar(&sf.ca, "ca", "", "PEM file of extra CA certificates for https:// and grpcs:// "+what)
	f.DurationVar(&sf.stall, "stall-timeout", failover.DefaultOptions().StallTimeout, "a transfer that delivers no byte for this long moves to the next source, resuming at its offset")
}

// options turns the flags into source.Options.
func (sf *sourceFlags) options() (source.Options, error) {
	opts := source.DefaultOptions()
	var err error
	if opts.Proxy, err = parseProxy(sf.proxy); err != nil {
		return opts, err
	}
	opts.NoProxy, opts.CAFile = sf.noProxy, sf.ca
	opts.CertFile, opts.KeyFile = sf.cert, sf.key
	if (sf.cert == "") != (sf.key == "") {
		return opts, usageError(errors.New("give both --cert and --key (a client certificate and its key), or neither"))
	}
	if err := opts.Validate(); err != nil {
		return opts, err
	}
	return opts, nil
}

// open parses source URLs, in order.
func (sf *sourceFlags) open(urls []string) ([]source.Source, error) {
	opts, err := sf.options()
	if err != nil {
		return nil, err
	}
	return source.ParseList(urls, opts)
}

// parseProxy parses --proxy; "" means none (the environment applies).
func parseProxy(proxy string) (*url.URL, error) {
	if proxy == "" {
		return nil, nil
	}
	u, err := url.Parse(proxy)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, usageError(fmt.Errorf("--proxy %q: want http://[user:pass@]host:port", redactProxy(proxy)))
	}
	return u, nil
}

func closeSources(srcs []source.Source) {
	for _, s := range srcs {
		s.Close()
	}
}

// progress draws a one-line progress display on stderr when it is a
// terminal; otherwise it does nothing. The agent counts only the bytes
// this run transfers (not those of a resumed download), so the speed is
// that of this run's transfers.
type progress struct {
	enabled bool
	desc    string
	out     io.Writer
	mu      sync.Mutex // protects the fields below
	start   time.Time  // the first call
	drawn   time.Time  // the last line drawn
	width   int        // of the last line drawn
}

// progressEvery throttles redrawing.
const progressEvery = 150 * time.Millisecond

func newProgress(wanted bool, desc string) *progress {
	return &progress{enabled: wanted && term.IsTerminal(int(os.Stderr.Fd())), desc: desc, out: os.Stderr}
}

// update is a Progress callback for agent.Config and agent.MirrorConfig.
func (p *progress) update(done, total int64) {
	if !p.enabled {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	if p.start.IsZero() {
		p.start = now
	}
	if now.Sub(p.drawn) < progressEvery && done < total {
		return
	}
	p.drawn = now
	line := formatProgress(p.desc, done, total, now.Sub(p.start))
	pad := max(p.width-len(line), 0)
	fmt.Fprintf(p.out, "\r%s%s", line, strings.Repeat(" ", pad))
	p.width = len(line)
}

// finish clears the line.
func (p *progress) finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.width > 0 {
		fmt.Fprintf(p.out, "\r%s\r", strings.Repeat(" ", p.width))
		p.width = 0
	}
}

// formatProgress renders "DESC  42% 10.0 MiB / 24.0 MiB  3.1 MiB/s": done
// of total bytes transferred in elapsed. The speed is shown once there is
// a second's worth of measure (a rate over a few milliseconds means
// nothing).
func formatProgress(desc string, done, total int64, elapsed time.Duration) string {
	pct := 100
	if total > 0 {
		pct = int(min(done*100/total, 100))
	}
	line := fmt.Sprintf("%s %3d%% %s / %s", desc, pct, formatBytes(done), formatBytes(total))
	if elapsed >= time.Second {
		line += fmt.Sprintf("  %s/s", formatBytes(int64(float64(done)/elapsed.Seconds())))
	}
	return line
}

// siteSources are the sources of `update --discover`: the DPs a DP of the
// site lists, nearest first, then the configured sources it did not list.
// With --watch they are asked again at every poll (WatchConfig.Discover).
type siteSources struct {
	configured []source.Source // from --source; closed at the end
	current    []source.Source // the last list
	site       string
	opts       source.Options
}

// discover asks the DPs of the last list in turn (the first may be the DP
// that went down) until one lists the DPs of the site, and makes that the
// list. Connections to DPs no longer listed are closed.
func (s *siteSources) discover(ctx context.Context) ([]source.Source, error) {
	var err error
	for _, src := range s.current {
		dp, ok := src.(*source.GRPC)
		if !ok {
			continue
		}
		var listed []source.Source
		if listed, err = dp.Listed(ctx, s.site, s.opts, s.current); err != nil {
			continue
		}
		next := append(listed, source.Unlisted(s.configured, listed)...)
		for _, old := range source.Unlisted(source.Unlisted(s.current, next), s.configured) {
			old.Close()
		}
		s.current = next
		return next, nil
	}
	if err == nil {
		err = fmt.Errorf("no grpc:// or grpcs:// source to ask which DPs to use: %w", source.ErrInvalid)
	}
	return s.current, err
}

// close closes every source, configured or found.
func (s *siteSources) close() {
	closeSources(append(source.Unlisted(s.current, s.configured), s.configured...))
}

// dialDP connects to the DP at addr (host:port, or a grpc:// or grpcs://
// URL) for its AdminService.
func dialDP(addr string, sf *sourceFlags) (*source.GRPC, error) {
	opts, err := sf.options()
	if err != nil {
		return nil, err
	}
	return dialDPWith(addr, opts)
}

// dialDPWith is dialDP with the source options given.
func dialDPWith(addr string, opts source.Options) (*source.GRPC, error) {
	u := addr
	if !strings.Contains(addr, "://") {
		u = "grpc://" + addr
	}
	s, err := source.Parse(u, opts)
	if err != nil {
		return nil, fmt.Errorf("--node %q: %w", addr, err)
	}
	dp, ok := s.(*source.GRPC)
	if !ok {
		s.Close()
		return nil, usageError(fmt.Errorf("--node %q: want host:port, grpc://host:port or grpcs://host:port", addr))
	}
	return dp, nil
}

// dpHint adds to an error of a DP's AdminService what to check: the
// client certificate when the DP refused it, else whether a DP runs there.
func dpHint(err error, addr string) error {
	if errors.Is(err, source.ErrRefused) {
		return fmt.Errorf("%w (check --cert and --key: an admin certificate of the DP's --client-ca)", err)
	}
	return fmt.Errorf("%w (is `dpcache node` running there with --grpc %s?)", err, addr)
}
