package testenv

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestCA is a certificate authority made for one test: its key lives in
// memory, its certificate in CAFile (PEM), and Issue signs server
// certificates with it. It is what a company CA is to dpcache: trusted
// through --ca FILE (source.Options.CAFile), never through the system
// roots. Its methods are safe for concurrent use.
type TestCA struct {
	// CAFile is the CA certificate, PEM-encoded.
	CAFile string
	// Cert is the CA certificate.
	Cert *x509.Certificate
	// Pool holds Cert only, for clients built in the test.
	Pool *x509.CertPool

	key    *ecdsa.PrivateKey
	dir    string
	serial atomic.Int64
}

// NewTestCA creates a CA valid from an hour ago for a day, with an ECDSA
// P-256 key, and writes its certificate to a file in a temporary directory.
func NewTestCA(t testing.TB) *TestCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("testenv: CA key: %v", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "dpcache test CA " + randomToken()[:8], Organization: []string{"dpcache tests"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("testenv: CA certificate: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("testenv: CA certificate: %v", err)
	}
	ca := &TestCA{Cert: cert, Pool: x509.NewCertPool(), key: key, dir: t.TempDir()}
	ca.Pool.AddCert(cert)
	ca.serial.Store(1)
	ca.CAFile = filepath.Join(ca.dir, "ca.pem")
	writePEM(t, ca.CAFile, "CERTIFICATE", der, 0o644)
	return ca
}

// Issue signs a server certificate for hosts (IP addresses and DNS names;
// "127.0.0.1" when none is given) and writes it and its key as PEM files,
// returning their paths. The key file has mode 0600 (nginx reads it as the
// user that starts it).
func (ca *TestCA) Issue(t testing.TB, hosts ...string) (certFile, keyFile string) {
	t.Helper()
	cert, key, n := ca.issue(t, hosts)
	certFile = filepath.Join(ca.dir, fmt.Sprintf("server-%d.pem", n))
	keyFile = filepath.Join(ca.dir, fmt.Sprintf("server-%d.key", n))
	writePEM(t, certFile, "CERTIFICATE", cert.Certificate[0], 0o644)
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("testenv: marshal server key: %v", err)
	}
	writePEM(t, keyFile, "PRIVATE KEY", der, 0o600)
	return certFile, keyFile
}

// TLSConfig returns a server tls.Config with a certificate for hosts, for
// servers written in Go (httptest, gRPC) in the test.
func (ca *TestCA) TLSConfig(t testing.TB, hosts ...string) *tls.Config {
	t.Helper()
	cert, _, _ := ca.issue(t, hosts)
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
}

func (ca *TestCA) issue(t testing.TB, hosts []string) (tls.Certificate, *ecdsa.PrivateKey, int64) {
	t.Helper()
	if len(hosts) == 0 {
		hosts = []string{"127.0.0.1"}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("testenv: server key: %v", err)
	}
	now := time.Now()
	serial := ca.serial.Add(1)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: hosts[0]},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatalf("testenv: sign server certificate for %v: %v", hosts, err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, key, serial
}

func writePEM(t testing.TB, path, typ string, der []byte, mode os.FileMode) {
	t.Helper()
	data := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatalf("testenv: write %s: %v", path, err)
	}
}

// NginxTLS is an nginx started by StartNginxTLS: the embedded Nginx serves
// plain HTTP (URL, Addr) and the same locations over HTTPS (TLSURL,
// TLSAddr).
type NginxTLS struct {
	*Nginx
	// TLSURL is the root of the served tree over HTTPS, ending in "/".
	TLSURL string
	// TLSAddr is "127.0.0.1:PORT" of the HTTPS listener.
	TLSAddr string
	// CertFile and KeyFile are the server's certificate and key, issued by
	// the CA given to StartNginxTLS for 127.0.0.1 and localhost.
	CertFile, KeyFile string
}

// StartNginxTLS is StartNginx with a second, HTTPS listener whose
// certificate ca issues for 127.0.0.1 and localhost. opts.ServerConfig is
// kept (added after the TLS directives).
func StartNginxTLS(t testing.TB, root string, ca *TestCA, opts NginxOptions) *NginxTLS {
	t.Helper()
	certFile, keyFile := ca.Issue(t, "127.0.0.1", "localhost")
	tlsAddr := FreeAddr(t, "127.0.0.1")
	directives := []string{
		"listen " + tlsAddr + " ssl;",
		"ssl_certificate " + quote(certFile) + ";",
		"ssl_certificate_key " + quote(keyFile) + ";",
		"ssl_protocols TLSv1.2 TLSv1.3;",
	}
	if opts.ServerConfig != "" {
		directives = append(directives, opts.ServerConfig)
	}
	opts.ServerConfig = strings.Join(directives, "\n        ")
	n := StartNginx(t, root, opts)
	prefix := strings.TrimPrefix(n.URL, "http://"+n.Addr)
	return &NginxTLS{Nginx: n, TLSURL: "https://" + tlsAddr + prefix, TLSAddr: tlsAddr, CertFile: certFile, KeyFile: keyFile}
}
