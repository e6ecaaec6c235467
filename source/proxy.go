package source

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
)

// noProxy is a parsed NoProxy list.
type noProxy struct {
	all     bool
	entries []noProxyEntry
}

// noProxyEntry matches one NoProxy element: exactly one of prefix, addr and
// domain is set; port, when not empty, must match too.
type noProxyEntry struct {
	prefix netip.Prefix
	addr   netip.Addr
	domain string // lower case, without leading or trailing dot
	port   string
}

// parseNoProxy parses a NO_PROXY-style list (see Options.NoProxy).
func parseNoProxy(s string) (noProxy, error) {
	var np noProxy
	for _, raw := range strings.Split(s, ",") {
		e := strings.TrimSpace(raw)
		if e == "" {
			continue
		}
		if e == "*" {
			np.all = true
			continue
		}
		bad := func(why string) (noProxy, error) {
			return noProxy{}, fmt.Errorf("source options: NoProxy entry %q: %s: %w", e, why, ErrBadOptions)
		}
		if strings.Contains(e, "/") {
			p, err := netip.ParsePrefix(e)
			if err != nil {
				return bad("not a CIDR block such as 10.0.0.0/8")
			}
			np.entries = append(np.entries, noProxyEntry{prefix: p.Masked()})
			continue
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
			return bad("port is not a number")
		}
		if a, err := netip.ParseAddr(host); err == nil {
			np.entries = append(np.entries, noProxyEntry{addr: a.Unmap(), port: port})
			continue
		}
		if strings.Contains(host, ":") {
			return bad("not an IP address, host or domain")
		}
		d := strings.ToLower(strings.Trim(strings.TrimPrefix(host, "*"), "."))
		if d == "" {
			return bad("empty domain")
		}
		np.entries = append(np.entries, noProxyEntry{domain: d, port: port})
	}
	return np, nil
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
	port := u.Port()
	if port == "" {
		switch u.Scheme {
		case "https":
			port = "443"
		default:
			port = "80"
		}
	}
	addr, addrErr := netip.ParseAddr(host)
	if addrErr == nil {
		addr = addr.Unmap()
	}
	for _, e := range np.entries {
		if e.port != "" && e.port != port {
			continue
		}
		switch {
		case e.prefix.IsValid():
			if addrErr == nil && e.prefix.Contains(addr) {
				return true
			}
		case e.addr.IsValid():
			if addrErr == nil && e.addr == addr {
				return true
			}
		default:
			if host == e.domain || strings.HasSuffix(host, "."+e.domain) {
				return true
			}
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
