package node

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/dpcache/dpcache/gossip"
	"github.com/dpcache/dpcache/pki"
	"github.com/dpcache/dpcache/source"
)

// nodeTLS is the DP's TLS identity and the CA its clients' certificates
// must come from. Both re-read their files when they change.
type nodeTLS struct {
	keyPair   *pki.KeyPair
	clientCAs *pki.CertPool // nil without Config.ClientCAFile
	peerCAs   *pki.CertPool // --ca (SourceOptions.CAFile); nil without
}

// loadTLS reads the DP's certificate, key and client CA; nil without
// Config.TLSCertFile.
func loadTLS(cfg Config, n *Node) (*nodeTLS, error) {
	if cfg.TLSCertFile == "" {
		return nil, nil
	}
	log := cfg.Logger.With("component", "tls", "node", cfg.Name)
	kp, err := pki.LoadKeyPair(cfg.TLSCertFile, cfg.TLSKeyFile, log)
	if err != nil {
		return nil, fmt.Errorf("--tls-cert/--tls-key: %w", err)
	}
	t := &nodeTLS{keyPair: kp}
	if cfg.ClientCAFile != "" {
		if t.clientCAs, err = pki.LoadCertPool(cfg.ClientCAFile, log); err != nil {
			return nil, fmt.Errorf("--client-ca: %w", err)
		}
	}
	if f := cfg.SourceOptions.CAFile; f != "" {
		if t.peerCAs, err = pki.LoadCertPool(f, log); err != nil {
			return nil, fmt.Errorf("--ca: %w", err)
		}
	}
	return t, nil
}

// gossipTrust is what gossip signs the DP's holdings with and verifies
// members' holdings against: the DP's certificate, and the CA its peers'
// certificates come from, as peers are dialed (--ca when given, else
// --client-ca, else the system roots). Without TLS, gossip is neither
// signed nor verified.
func (t *nodeTLS) gossipTrust(gc *gossip.Config) {
	if t == nil {
		return
	}
	gc.Identity = t.keyPair
	switch {
	case t.peerCAs != nil:
		gc.Roots = t.peerCAs
	case t.clientCAs != nil:
		gc.Roots = t.clientCAs
	}
}

// mutual reports whether clients must present a certificate (mTLS):
// roles then decide what they may do.
func (t *nodeTLS) mutual() bool { return t != nil && t.clientCAs != nil }

// serverOptions is the gRPC server's transport: TLS. With a client CA, a
// client certificate is asked for but not checked at the handshake: the
// interceptors (auth.go) verify it against the client CA on every call and
// refuse a call without a valid one, health checks excepted, with
// Unauthenticated. A client then reads a status that says why, where a
// handshake that failed would reach it as a cut connection (TLS 1.3 sends
// the alert after the client's first write), and probes need no
// certificate.
func (t *nodeTLS) serverOptions() []grpc.ServerOption {
	if t == nil {
		return nil
	}
	return []grpc.ServerOption{grpc.Creds(credentials.NewTLS(pki.ServerConfig(t.keyPair, t.clientCAs, tls.RequestClientCert, nil)))}
}

// verifyClient verifies a gRPC client's certificate chain against the
// client CA of the moment.
func (t *nodeTLS) verifyClient(chain []*x509.Certificate) (*x509.Certificate, error) {
	return pki.VerifyClient(chain, t.clientCAs.Pool())
}

// httpListener wraps the HTTP listener in TLS; a client certificate is
// verified when given (browsers and probes come without one).
func (t *nodeTLS) httpListener(ln net.Listener) net.Listener {
	if t == nil {
		return ln
	}
	return tls.NewListener(ln, pki.ServerConfig(t.keyPair, t.clientCAs, tls.VerifyClientCertIfGiven, []string{"http/1.1"}))
}

// upstreamOptions adds the DP's certificate to what https:// and grpcs://
// upstreams are dialed with (their servers are verified as before: the
// system roots and --ca).
func (t *nodeTLS) upstreamOptions(opts source.Options) source.Options {
	if t == nil {
		return opts
	}
	base := opts.TLSConfig
	if base == nil {
		base = &tls.Config{MinVersion: tls.VersionTLS12}
	} else {
		base = base.Clone()
	}
	base.GetClientCertificate = t.keyPair.GetClientCertificate
	opts.TLSConfig = base
	return opts
}

// peerOptions is how peers are dialed: with the DP's certificate; a peer's
// is verified with --ca when given, else with the client CA alone, and
// must then carry the dp role.
func (t *nodeTLS) peerOptions(opts source.Options) source.Options {
	if t == nil {
		return opts
	}
	if opts.CAFile != "" || t.clientCAs == nil {
		return t.upstreamOptions(opts)
	}
	opts.TLSConfig = pki.ClientConfig(t.keyPair, t.clientCAs, pki.RoleDP)
	return opts
}

// reloadCertificates re-reads the DP's certificate, key and client CA now
// (Reload); they are also re-read when they change. On error the previous
// ones stay in use (and package pki logs why). Without TLS it does
// nothing.
func (n *Node) reloadCertificates() error {
	if n.tls == nil {
		return nil
	}
	err := n.tls.keyPair.Reload()
	for _, p := range []*pki.CertPool{n.tls.clientCAs, n.tls.peerCAs} {
		if p != nil {
			err = errors.Join(err, p.Reload())
		}
	}
	return err
}
