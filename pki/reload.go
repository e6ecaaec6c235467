package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"
)

// CheckInterval is how often, at most, KeyPair and CertPool look at their
// files for a change (when a handshake asks for them).
const CheckInterval = time.Second

// KeyPair is a certificate and its private key, read from two PEM files
// and re-read when they change (see the package doc). Create it with
// LoadKeyPair.
type KeyPair struct{ w *watched[*tls.Certificate] }

// LoadKeyPair reads certFile and keyFile now: an error names the file and
// what is wrong. log (nil: slog.Default()) receives reloads and failed
// reloads.
func LoadKeyPair(certFile, keyFile string, log *slog.Logger) (*KeyPair, error) {
	w, err := newWatched("certificate "+certFile, []string{certFile, keyFile}, log, func() (*tls.Certificate, error) {
		return loadKeyPair(certFile, keyFile)
	})
	if err != nil {
		return nil, err
	}
	return &KeyPair{w: w}, nil
}

func loadKeyPair(certFile, keyFile string) (*tls.Certificate, error) {
	if _, err := readCerts(certFile); err != nil {
		return nil, err
	}
	if _, err := os.Stat(keyFile); err != nil {
		return nil, fmt.Errorf("key file %s: %w: %v", keyFile, ErrBadFile, pathCause(err))
	}
	c, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("certificate %s with key %s: %w: %v", certFile, keyFile, ErrBadFile, err)
	}
	if c.Leaf == nil {
		if c.Leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return nil, fmt.Errorf("certificate %s: %w: %v", certFile, ErrBadFile, err)
		}
	}
	return &c, nil
}

// Certificate returns the pair in use, after a check for changed files
// when the last one is CheckInterval old.
func (k *KeyPair) Certificate() *tls.Certificate { return k.w.get() }

// Reload re-reads the files now. On error the previous pair stays in use.
func (k *KeyPair) Reload() error { return k.w.refresh(true) }

// GetCertificate is a tls.Config.GetCertificate that serves the current
// pair.
func (k *KeyPair) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return k.Certificate(), nil
}

// GetClientCertificate is a tls.Config.GetClientCertificate that presents
// the current pair.
func (k *KeyPair) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return k.Certificate(), nil
}

// CertPool is a set of CA certificates read from a PEM file and re-read
// when it changes. Create it with LoadCertPool.
type CertPool struct{ w *watched[*x509.CertPool] }

// LoadCertPool reads the CA certificates of file now.
func LoadCertPool(file string, log *slog.Logger) (*CertPool, error) {
	w, err := newWatched("CA file "+file, []string{file}, log, func() (*x509.CertPool, error) {
		certs, err := readCerts(file)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		for _, c := range certs {
			pool.AddCert(c)
		}
		return pool, nil
	})
	if err != nil {
		return nil, err
	}
	return &CertPool{w: w}, nil
}

// Pool returns the certificates in use, after a check for a changed file
// when the last one is CheckInterval old. The caller must not modify it.
func (p *CertPool) Pool() *x509.CertPool { return p.w.get() }

// Reload re-reads the file now. On error the previous pool stays in use.
func (p *CertPool) Reload() error { return p.w.refresh(true) }

// ServerConfig returns a server's TLS configuration serving kp's current
// certificate. With clientCAs, each handshake asks for a client
// certificate as auth says and verifies it against clientCAs' current
// pool. nextProtos are the ALPN protocols offered (grpc-go adds h2 itself).
func ServerConfig(kp *KeyPair, clientCAs *CertPool, auth tls.ClientAuthType, nextProtos []string) *tls.Config {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: kp.GetCertificate, NextProtos: nextProtos}
	if clientCAs == nil {
		return cfg
	}
	cfg.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: kp.GetCertificate,
			NextProtos: slices.Clone(nextProtos), ClientAuth: auth, ClientCAs: clientCAs.Pool()}, nil
	}
	return cfg
}

// VerifyClient verifies a client's certificate chain as a TLS server
// would (chain[0] is the leaf, the rest intermediates) against pool, for
// client authentication, and returns the leaf.
func VerifyClient(chain []*x509.Certificate, pool *x509.CertPool) (*x509.Certificate, error) {
	if len(chain) == 0 {
		return nil, errors.New("no client certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	var (
		unknown x509.UnknownAuthorityError
		invalid x509.CertificateInvalidError
	)
	name := chain[0].Subject.CommonName
	switch {
	case err == nil:
		return chain[0], nil
	case errors.As(err, &unknown):
		return nil, fmt.Errorf("the certificate of %q: not signed by a CA trusted here", name)
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return nil, fmt.Errorf("the certificate of %q: expired or not valid yet", name)
	case errors.As(err, &invalid) && invalid.Reason == x509.IncompatibleUsage:
		return nil, fmt.Errorf("the certificate of %q: not a client certificate", name)
	}
	return nil, fmt.Errorf("the certificate of %q: %w", name, err)
}

// ClientConfig returns a client's TLS configuration presenting kp's
// current certificate (kp nil: none). With roots, the server's certificate
// is verified against roots' current pool only (not the system roots);
// without, crypto/tls verifies it against RootCAs as usual. With
// serverRole, the server's certificate must also carry that role.
func ClientConfig(kp *KeyPair, roots *CertPool, serverRole Role) *tls.Config {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if kp != nil {
		cfg.GetClientCertificate = kp.GetClientCertificate
	}
	if roots == nil && serverRole == "" {
		return cfg
	}
	// With roots, crypto/tls's own verification is replaced by the one
	// below, against the pool of the moment (a CA file may be replaced).
	cfg.InsecureSkipVerify = roots != nil
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("the server sent no certificate")
		}
		leaf := cs.PeerCertificates[0]
		if roots != nil {
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			if _, err := leaf.Verify(x509.VerifyOptions{DNSName: cs.ServerName, Roots: roots.Pool(), Intermediates: inter,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
				return err
			}
		}
		if serverRole != "" {
			if _, role := Identify(leaf); role != serverRole {
				return fmt.Errorf("the server's certificate (CN=%s) has role %q, want %q", leaf.Subject.CommonName, role, serverRole)
			}
		}
		return nil
	}
	return cfg
}

// watched is a value loaded from files and re-loaded when they change.
type watched[T any] struct {
	what  string
	files []string
	load  func() (T, error)
	log   *slog.Logger

	mu      sync.Mutex // protects the fields below
	cur     T
	stamps  []stamp   // of files when cur was loaded
	checked time.Time // last look at the files
}

// stamp tells a file's versions apart: a replaced certificate has a new
// modification time (and often a new size).
type stamp struct {
	size int64
	mod  time.Time
}

func newWatched[T any](what string, files []string, log *slog.Logger, load func() (T, error)) (*watched[T], error) {
	if log == nil {
		log = slog.Default()
	}
	w := &watched[T]{what: what, files: files, load: load, log: log}
	st, _ := stamps(files)
	v, err := load()
	if err != nil {
		return nil, err
	}
	w.cur, w.stamps, w.checked = v, st, time.Now()
	return w, nil
}

func (w *watched[T]) get() T {
	w.mu.Lock()
	defer w.mu.Unlock()
	if time.Since(w.checked) >= CheckInterval {
		_ = w.refreshLocked(false) // logged; the previous value stays
	}
	return w.cur
}

func (w *watched[T]) refresh(force bool) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.refreshLocked(force)
}

func (w *watched[T]) refreshLocked(force bool) error {
	w.checked = time.Now()
	st, err := stamps(w.files)
	if err == nil && !force && slices.Equal(st, w.stamps) {
		return nil
	}
	v, lerr := w.load()
	if lerr != nil {
		// Stamps stay: the next check tries again (the key may follow
		// its certificate in a moment).
		w.log.Warn("cannot reload "+w.what+"; the previous one stays in use", "err", lerr)
		return lerr
	}
	w.cur, w.stamps = v, st
	w.log.Info("reloaded " + w.what)
	return nil
}

func stamps(files []string) ([]stamp, error) {
	out := make([]stamp, len(files))
	for i, f := range files {
		fi, err := os.Stat(f)
		if err != nil {
			return nil, err
		}
		out[i] = stamp{size: fi.Size(), mod: fi.ModTime()}
	}
	return out, nil
}
