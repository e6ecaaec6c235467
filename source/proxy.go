package source

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"

	"golang.org/x/net/http/httpproxy"
)

// noProxy is a parsed NoProxy list (see Options.NoProxy). Hosts are matched
// by golang.org/x/net/http/httpproxy, the NO_PROXY rules of Go's transport,
// with what Options documents on top:
//   - a leading "." or "*." also matches the domain itself, as curl does
//     (httpproxy matches only the subdomains), and a trailing "." is
//     ignored on both sides;
//   - an explicit Proxy takes loopback hosts too, so the list decides for
//     them (httpproxy never proxies loopback, and so never asks its list);
//   - a malformed entry is an error, not silently ignored.
type noProxy struct {
	all     bool
	entries []noProxyEntry
	// direct is httpproxy's ProxyFunc for the list with a stand-in proxy:
	// it returns a nil URL for a host to reach directly.
	direct func(*url.URL) (*url.URL, error)
}

// noProxyEntry is one NoProxy element: a CIDR block (a single address is a
// /32 or /128 block) or a host or domain, with an optional port.
type noProxyEntry struct {
	prefix netip.Prefix
	domain string // lower case, without leading "*." or "." or trailing "."
	port   string
}

// String returns the entry in the form httpproxy reads, where a bare
// domain matches itself and its subdomains.
func (e noProxyEntry) String() string {
	host := e.domain
	if e.prefix.IsValid() {
		if !e.prefix.IsSingleIP() {
			return e.prefix.String()
		}
		host = e.prefix.Addr().String()
	}
	if e.port == "" {
		return host
	}
	return net.JoinHostPort(host, e.port)
}

// matchesNothing reports whether e can match no host, and so is not handed
// to httpproxy, which would read it differently: an IPv4-mapped block
// (addresses are compared unmapped; net.IPNet would read it as an IPv4
// block) or a domain with a "*" left in it (httpproxy would read a bare
// "*" as every host).
func (e noProxyEntry) matchesNothing() bool {
	return e.prefix.IsValid() && e.prefix.Addr().Is4In6() || strings.Contains(e.domain, "*")
}

// noProxyStandIn is the proxy httpproxy is given; only whether it returns
// it matters.
const noProxyStandIn = "http://no-proxy.invalid"

// parseNoProxy parses a NO_PROXY-style list (see Options.NoProxy); errors
// wrap ErrBadOptions.
func parseNoProxy(s string) (noProxy, error) {
	var np noProxy
	var list []string
	for _, raw := range strings.Split(s, ",") {
		e := strings.TrimSpace(raw)
		if e == "" {
			continue
		}
		if e == "*" {
			np.all = true
			continue
		}
		ent, err := parseNoProxyEntry(e)
		if err != nil {
			return noProxy{}, fmt.Errorf("source options: NoProxy entry %q: %s: %w", e, err, ErrBadOptions)
		}
		np.entries = append(np.entries, ent)
		if !ent.matchesNothing() {
			list = append(list, ent.String())
		}
	}
	np.direct = (&httpproxy.Config{HTTPProxy: noProxyStandIn, HTTPSProxy: noProxyStandIn, NoProxy: strings.Join(list, ",")}).ProxyFunc()
	return np, nil
}

// parseNoProxyEntry checks one element of a NoProxy list, which is neither
// empty nor "*".
func parseNoProxyEntry(e string) (noProxyEntry, error) {
	if strings.Contains(e, "/") {
		p, err := netip.ParsePrefix(e)
		if err != nil {
			return noProxyEntry{}, errors.New("not a CIDR block such as 10.0.0.0/8")
		}
		return noProxyEntry{prefix: p.Masked()}, nil
	}
	host, port := e, ""
	switch {
	case strings.HasPrefix(e, "["):
		h, p, err := net.SplitHostPort(e)
		if err != nil {
			h, p = strings.TrimSuffix(strings.TrimPrefix(e, "["), "]"), ""
		}
		host, port = h, p
	case strings.Count(e, ":") == 1:
		host, port, _ = strings.Cut(e, ":")
	}
	if port != "" && strings.Trim(port, "0123456789") != "" {
		return noProxyEntry{}, errors.New("port is not a number")
	}
	if a, err := netip.ParseAddr(host); err == nil {
		a = a.Unmap()
		return noProxyEntry{prefix: netip.PrefixFrom(a, a.BitLen()), port: port}, nil
	}
	if strings.Contains(host, ":") {
		return noProxyEntry{}, errors.New("not an IP address, host or domain")
	}
	d := strings.ToLower(strings.Trim(strings.TrimPrefix(host, "*"), "."))
	if d == "" {
		return noProxyEntry{}, errors.New("empty domain")
	}
	return noProxyEntry{domain: d, port: port}, nil
}

// match reports whether u's host is to be reached directly.
func (np noProxy) match(u *url.URL) bool {
	if np.all {
		return true
	}
	if len(np.entries) == 0 {
		return false
	}
	host := strings.ToLower(strings.TrimSuffix(u.Hostname(), "."))
	if a, err := netip.ParseAddr(host); host == "localhost" || err == nil && a.IsLoopback() {
		return np.matchLoopback(u, host)
	}
	v := *u
	if v.Scheme != "https" {
		v.Scheme = "http"
	}
	v.Host = host
	if strings.Contains(host, ":") { // IPv6
		v.Host = "[" + host + "]"
	}
	if p := u.Port(); p != "" {
		v.Host = net.JoinHostPort(host, p)
	}
	p, err := np.direct(&v)
	return err == nil && p == nil
}

// matchLoopback is match for "localhost" and loopback addresses, which
// httpproxy always sends direct without asking its list.
func (np noProxy) matchLoopback(u *url.URL, host string) bool {
	port := u.Port()
	if port == "" {
		port = "80"
		if u.Scheme == "https" {
			port = "443"
		}
	}
	addr, addrErr := netip.ParseAddr(host)
	for _, e := range np.entries {
		switch {
		case e.port != "" && e.port != port:
		case e.prefix.IsValid():
			if addrErr == nil && e.prefix.Contains(addr.Unmap()) {
				return true
			}
		case host == e.domain || strings.HasSuffix(host, "."+e.domain):
			return true
		}
	}
	return false
}

// proxyFunc returns the http.Transport Proxy function for opts: the
// explicit proxy for every host NoProxy does not match (loopback
// included), or else the environment's proxy, still honouring NoProxy.
func proxyFunc(opts Options) (func(*http.Request) (*url.URL, error), error) {
	np, err := parseNoProxy(opts.NoProxy)
	if err != nil {
		return nil, err
	}
	if p := opts.Proxy; p != nil {
		return func(r *http.Request) (*url.URL, error) {
			if np.match(r.URL) {
				return nil, nil
			}
			return p, nil
		}, nil
	}
	return func(r *http.Request) (*url.URL, error) {
		if np.match(r.URL) {
			return nil, nil
		}
		return http.ProxyFromEnvironment(r)
	}, nil
}

// connectError is a proxy's refusal of a CONNECT tunnel, returned by the
// transport's OnProxyConnectResponse hook.
type connectError struct {
	status string
	code   int
	squid  string // X-Squid-Error, if any
}

func (e *connectError) Error() string {
	return "CONNECT refused: HTTP " + e.status
}

// onProxyConnectResponse turns a non-200 answer to CONNECT into a
// connectError, so that the source can name the proxy and say why.
func onProxyConnectResponse(_ context.Context, _ *url.URL, _ *http.Request, resp *http.Response) error {
	if resp.StatusCode == http.StatusOK {
		return nil
	}
	return &connectError{status: resp.Status, code: resp.StatusCode, squid: resp.Header.Get("X-Squid-Error")}
}
