package source

import (
	"fmt"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
)

// Parse turns a source URL into a Source. Accepted forms:
//
//	http://[user:pass@]host[:port]/[prefix/]  a repository served over HTTP
//	https://[user:pass@]host[:port]/[prefix/] the same over TLS (system roots + Options.CAFile)
//	ftp://[user[:pass]@]host[:port]/[path/]   a repository on an FTP server (anonymous without user)
//	file:///path, /path, ./path               a repository folder (a mounted share)
//	grpc://host:port                          a distribution point
//	grpcs://host:port                         a distribution point over TLS
//
// Errors wrap ErrBadURL (or ErrBadOptions for invalid opts, or a CA file
// that cannot be used) and never contain a password.
func Parse(raw string, opts Options) (Source, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	raw = strings.TrimSpace(raw)
	if raw == "" {
		return nil, fmt.Errorf("empty URL: %w", ErrBadURL)
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
	case "ftp":
		if u.Hostname() == "" {
			return nil, fmt.Errorf("source %q: %w: missing host (want ftp://[user[:password]@]host[:port]/path)", Redact(raw), ErrBadURL)
		}
		if p := u.Port(); p != "" {
			if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
				return nil, fmt.Errorf("source %q: %w: bad port %q", Redact(raw), ErrBadURL, p)
			}
		}
		return NewFTP(u, opts)
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return nil, fmt.Errorf("source %q: %w: file URLs name a local path (file:///path)", Redact(raw), ErrBadURL)
		}
		return NewFile(filepath.FromSlash(u.Path)), nil
	case "grpc", "grpcs":
		if u.Hostname() == "" || u.Port() == "" {
			return nil, fmt.Errorf("source %q: %w: want %s://host:port", Redact(raw), ErrBadURL, u.Scheme)
		}
		if u.Scheme == "grpcs" {
			return NewGRPCTLS(u.Host, opts)
		}
		return NewGRPC(u.Host, opts)
	default:
		return nil, fmt.Errorf("source %q: %w: unsupported scheme %q (want http, https, ftp, file, grpc or grpcs)", Redact(raw), ErrBadURL, u.Scheme)
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
		return nil, fmt.Errorf("no source URL given: %w", ErrBadURL)
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
