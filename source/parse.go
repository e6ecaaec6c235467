package source

import (
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"time"
)

// Options tune how sources are reached.
type Options struct {
	// Timeout bounds connecting and waiting for a response header (not a
	// whole transfer, which may legitimately take long). Default 10 s, as an
	// update task waits for one source before it moves to the next.
	Timeout time.Duration
	// Proxy, when set, is the HTTP proxy that http:// and https:// sources
	// go through. When nil, the standard environment variables apply.
	Proxy *url.URL
	// UserAgent is sent to HTTP sources. Default "dpcache".
	UserAgent string
}

// DefaultOptions returns the defaults documented on Options.
func DefaultOptions() Options {
	return Options{Timeout: 10 * time.Second, UserAgent: "dpcache"}
}

// Parse turns a source URL into a Source. Accepted forms:
//
//	http://host[:port]/[prefix/]   a repository served over HTTP
//	https://host[:port]/[prefix/]  the same over TLS (system roots)
//	file:///path, /path, ./path    a repository folder (a mounted share)
//	grpc://host:port               a distribution point
//
// Errors wrap ErrBadURL and never contain the URL's password.
func Parse(raw string, opts Options) (Source, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultOptions().Timeout
	}
	if opts.UserAgent == "" {
		opts.UserAgent = DefaultOptions().UserAgent
	}
	raw = strings.TrimSpace(raw)
	if raw == "" {
		return nil, fmt.Errorf("source: empty URL: %w", ErrBadURL)
	}
	if !strings.Contains(raw, "://") {
		return NewFile(raw), nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("source %q: %w: %v", Redact(raw), ErrBadURL, stripURLError(err))
	}
	switch u.Scheme {
	case "http", "https":
		if u.Hostname() == "" {
			return nil, fmt.Errorf("source %q: %w: missing host", Redact(raw), ErrBadURL)
		}
		return NewHTTP(u, opts)
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return nil, fmt.Errorf("source %q: %w: file URLs name a local path (file:///path)", Redact(raw), ErrBadURL)
		}
		return NewFile(filepath.FromSlash(u.Path)), nil
	case "grpc":
		if u.Hostname() == "" || u.Port() == "" {
			return nil, fmt.Errorf("source %q: %w: want grpc://host:port", Redact(raw), ErrBadURL)
		}
		return NewGRPC(u.Host, opts)
	default:
		return nil, fmt.Errorf("source %q: %w: unsupported scheme %q (want http, https, file or grpc)", Redact(raw), ErrBadURL, u.Scheme)
	}
}

// ParseList parses source URLs, in order; each element may itself be a
// comma-separated list.
func ParseList(urls []string, opts Options) ([]Source, error) {
	var out []Source
	for _, raw := range strings.Split(strings.Join(urls, ","), ",") {
		if strings.TrimSpace(raw) == "" {
			continue
		}
		s, err := Parse(raw, opts)
		if err != nil {
			for _, o := range out {
				o.Close()
			}
			return nil, err
		}
		out = append(out, s)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("source: no source URL given: %w", ErrBadURL)
	}
	return out, nil
}

// Redact returns raw with any password replaced by "xxxxx", for logs and
// errors.
func Redact(raw string) string {
	u, err := url.Parse(raw)
	if err == nil {
		return u.Redacted()
	}
	// Unparsable: drop everything between "://" and the last "@" of the
	// authority, which may hold a password.
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return raw
	}
	authority := rest
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		authority = rest[:i]
	}
	if i := strings.LastIndex(authority, "@"); i >= 0 {
		return scheme + "://xxxxx@" + rest[i+1:]
	}
	return raw
}

// stripURLError drops the URL from a *url.Error so that a password in it is
// not repeated.
func stripURLError(err error) error {
	if ue, ok := err.(*url.Error); ok {
		return ue.Err
	}
	return err
}
