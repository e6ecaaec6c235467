package source

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/dpcache/dpcache/pki"
)

// Options tune how sources are reached. The zero value is usable: Parse
// fills in the defaults documented on each field.
type Options struct {
	// Timeout bounds connecting and waiting for a response header or the
	// first bytes (an FTP login, a gRPC first message), not a whole
	// transfer, which may legitimately take long. Default 10 s, as an
	// update task waits for one source before it moves to the next.
	Timeout time.Duration
	// Proxy, when set, is the HTTP proxy that http:// and https:// sources
	// go through (https:// by CONNECT), for every host that NoProxy does
	// not match, loopback included. Its user and password, if any, are
	// sent as Proxy-Authorization (Basic). Schemes: http, https, socks5.
	// When nil, the standard environment variables apply (HTTP_PROXY,
	// HTTPS_PROXY, NO_PROXY; Go's rules, which never proxy loopback).
	// ftp:// and grpc(s):// sources never go through an HTTP proxy.
	Proxy *url.URL
	// NoProxy lists hosts reached directly, bypassing Proxy (or the
	// environment's proxy), in the NO_PROXY format: comma-separated host
	// names, domains ("example.com" or ".example.com" match the domain
	// and its subdomains), IP addresses, CIDR blocks ("10.0.0.0/8"), each
	// optionally with ":port"; "*" bypasses the proxy for every host.
	// Host names are compared as written in the source URL, never
	// resolved. Matching is golang.org/x/net/http/httpproxy's (Go's
	// transport's), except that loopback hosts are matched too.
	NoProxy string
	// CAFile is a PEM file of CA certificates trusted for https:// and
	// grpcs:// sources in addition to the system roots (a company CA, a
	// test CA). Empty means the system roots only.
	CAFile string
	// TLSConfig, when set, is the base TLS configuration for https:// and
	// grpcs:// sources (it is cloned, never modified); CAFile is still
	// added to its RootCAs (or to the system roots when RootCAs is nil).
	TLSConfig *tls.Config
	// CertFile and KeyFile, when set (both or neither), are the client
	// certificate and key (PEM) presented to https:// and grpcs:// sources
	// that ask for one (a DP with --client-ca). They are read when a TLS
	// source is created, and re-read when they change (package pki).
	CertFile, KeyFile string
	// UserAgent is sent to HTTP sources. Default "dpcache".
	UserAgent string
	// LeanConns makes each grpc:// and grpcs:// connection read through a
	// 64 KiB buffer instead of pb.BufferSize (1 MiB) and share its write
	// buffer between writes (grpc.WithSharedWriteBuffer): for a process
	// that holds thousands of connections at once (dpcache loadtest),
	// at some CPU cost per byte. Windows and everything else the server
	// sees are unchanged.
	LeanConns bool
}

// DefaultOptions returns the defaults documented on Options.
func DefaultOptions() Options {
	return Options{Timeout: 10 * time.Second, UserAgent: "dpcache"}
}

// withDefaults fills the zero fields that have a default.
func (o Options) withDefaults() Options {
	d := DefaultOptions()
	if o.Timeout <= 0 {
		o.Timeout = d.Timeout
	}
	if o.UserAgent == "" {
		o.UserAgent = d.UserAgent
	}
	return o
}

// Validate checks the options that can be checked without I/O: the proxy
// URL and the NoProxy list. Errors wrap ErrBadOptions and never show the
// proxy's password. A CA file is read, and checked, when a TLS source is
// created.
func (o Options) Validate() error {
	if o.Timeout < 0 {
		return fmt.Errorf("source options: Timeout %v is negative: %w", o.Timeout, ErrBadOptions)
	}
	if p := o.Proxy; p != nil {
		switch p.Scheme {
		case "http", "https", "socks5":
		default:
			return fmt.Errorf("source options: proxy %s: scheme %q not supported (want http, https or socks5): %w", p.Redacted(), p.Scheme, ErrBadOptions)
		}
		if p.Hostname() == "" {
			return fmt.Errorf("source options: proxy %s: missing host: %w", p.Redacted(), ErrBadOptions)
		}
	}
	if _, err := parseNoProxy(o.NoProxy); err != nil {
		return err
	}
	if (o.CertFile == "") != (o.KeyFile == "") {
		return fmt.Errorf("source options: a client certificate needs both its certificate and its key file (--cert and --key): %w", ErrBadOptions)
	}
	return nil
}

// tlsConfig returns the TLS configuration for https:// and grpcs://
// sources: TLSConfig (cloned) or a new one, with CAFile's certificates
// added to the roots. It returns nil when neither is set (the system roots
// apply).
func (o Options) tlsConfig() (*tls.Config, error) {
	if o.TLSConfig == nil && o.CAFile == "" && o.CertFile == "" {
		return nil, nil
	}
	var cfg *tls.Config
	if o.TLSConfig != nil {
		cfg = o.TLSConfig.Clone()
	} else {
		cfg = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	if o.CertFile != "" {
		kp, err := pki.LoadKeyPair(o.CertFile, o.KeyFile, nil)
		if err != nil {
			return nil, fmt.Errorf("source options: client %w: %w", err, ErrBadOptions)
		}
		cfg.GetClientCertificate = kp.GetClientCertificate
	}
	if o.CAFile == "" {
		return cfg, nil
	}
	pem, err := os.ReadFile(o.CAFile)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, fmt.Errorf("source options: CA file %s: cannot read it: %v: %w", o.CAFile, err, ErrBadOptions)
	}
	pool := cfg.RootCAs
	if pool == nil {
		if pool, err = x509.SystemCertPool(); err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
	} else {
		pool = pool.Clone()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("source options: CA file %s: no PEM certificate in it (want \"-----BEGIN CERTIFICATE-----\" blocks): %w", o.CAFile, ErrBadOptions)
	}
	cfg.RootCAs = pool
	return cfg, nil
}

// LoadTLS reads CAFile and the client certificate (CertFile, KeyFile) now
// and returns options whose TLSConfig holds them, the file names cleared,
// so that sources created from the result read no file (the certificate
// is still re-read when its files change, see package pki). A process
// that creates many TLS sources (dpcache loadtest: one per simulated
// endpoint) calls it once. Options naming no file come back unchanged.
// Errors wrap ErrBadOptions.
func (o Options) LoadTLS() (Options, error) {
	cfg, err := o.tlsConfig()
	if err != nil || cfg == nil {
		return o, err
	}
	o.TLSConfig, o.CAFile, o.CertFile, o.KeyFile = cfg, "", "", ""
	return o, nil
}

// trustDescription says what TLS trusts, for certificate errors.
func (o Options) trustDescription() string {
	switch {
	case o.CAFile != "":
		return "the system roots and the CA file " + o.CAFile
	case o.TLSConfig != nil && o.TLSConfig.RootCAs != nil:
		return "the configured roots"
	default:
		return "the system roots only; trust the server's CA with a CA file, --ca"
	}
}

// redactedProxy names a proxy for errors and logs.
func redactedProxy(p *url.URL) string {
	if p == nil {
		return ""
	}
	return strings.TrimSuffix(p.Redacted(), "/")
}
