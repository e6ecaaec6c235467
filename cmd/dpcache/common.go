package main

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/dpcache/dpcache/source"
	"github.com/dpcache/dpcache/source/failover"
)

// sourceFlags are the flags that say how sources are reached.
type sourceFlags struct {
	proxy, noProxy, ca string
	stall              time.Duration
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
		return nil, fmt.Errorf("--proxy %q: want http://[user:pass@]host:port", redactProxy(proxy))
	}
	return u, nil
}

func closeSources(srcs []source.Source) {
	for _, s := range srcs {
		s.Close()
	}
}

// progress draws a progress bar on stderr when it is a terminal; otherwise
// it does nothing.
type progress struct {
	enabled bool
	desc    string
	mu      sync.Mutex // protects bar
	bar     *progressbar.ProgressBar
}

func newProgress(wanted bool, desc string) *progress {
	return &progress{enabled: wanted && term.IsTerminal(int(os.Stderr.Fd())), desc: desc}
}

// update is a Progress callback for agent.Config and agent.MirrorConfig.
func (p *progress) update(done, total int64) {
	if !p.enabled {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bar == nil {
		p.bar = progressbar.NewOptions64(total,
			progressbar.OptionSetWriter(os.Stderr),
			progressbar.OptionSetDescription(p.desc),
			progressbar.OptionShowBytes(true),
			progressbar.OptionThrottle(100_000_000),
			progressbar.OptionClearOnFinish())
	}
	p.bar.ChangeMax64(total)
	p.bar.Set64(done)
}

func (p *progress) finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bar != nil {
		p.bar.Finish()
	}
}

// discoverSources asks the first grpc(s):// source for the DPs of site and
// returns them, nearest first, followed by the sources given (each once).
func discoverSources(ctx context.Context, srcs []source.Source, site string, sf *sourceFlags) ([]source.Source, error) {
	opts, err := sf.options()
	if err != nil {
		return srcs, err
	}
	return source.Discover(ctx, srcs, site, opts)
}

// dialDP connects to the DP at addr (host:port, or a grpc:// or grpcs://
// URL) for its AdminService.
func dialDP(addr string, sf *sourceFlags) (*source.GRPC, error) {
	u := addr
	if !strings.Contains(addr, "://") {
		u = "grpc://" + addr
	}
	opts, err := sf.options()
	if err != nil {
		return nil, err
	}
	s, err := source.Parse(u, opts)
	if err != nil {
		return nil, fmt.Errorf("--node %q: %w", addr, err)
	}
	dp, ok := s.(*source.GRPC)
	if !ok {
		s.Close()
		return nil, fmt.Errorf("--node %q: want host:port or grpc://host:port", addr)
	}
	return dp, nil
}
