package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unicode"
)

// Validity of what InitCA and Issue make. A leaf is re-issued yearly (its
// DP picks the new files up without a restart); the CA outlives many of
// them.
const (
	// CAValidity is how long a CA certificate made by InitCA is valid.
	CAValidity = 10 * 365 * 24 * time.Hour
	// LeafValidity is how long a certificate made by Issue is valid.
	LeafValidity = 365 * 24 * time.Hour
	// backdate covers clocks a little behind the issuer's.
	backdate = 5 * time.Minute
)

// The files of a CA directory.
const (
	CACertFile = "ca.pem"
	CAKeyFile  = "ca.key"
)

// InitCA makes a new CA in dir (created if needed): dir/ca.pem, its
// certificate, and dir/ca.key (mode 0600), its private key. name is the
// CA's common name. It refuses to overwrite an existing dir/ca.key
// (ErrExists): every certificate it signed would become worthless.
func InitCA(dir, name string) error {
	if err := validName(name); err != nil {
		return err
	}
	keyFile, certFile := filepath.Join(dir, CAKeyFile), filepath.Join(dir, CACertFile)
	if _, err := os.Lstat(keyFile); err == nil {
		return fmt.Errorf("CA key %s: %w (remove it to start a new CA, which invalidates every certificate it issued)", keyFile, ErrExists)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("CA directory %s: %w", dir, err)
	}
	key, serial, now, err := newSubject("CA key")
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return fmt.Errorf("CA certificate: %w", err)
	}
	return writePair(certFile, keyFile, der, key)
}

// IssueRequest says what certificate Issue makes.
type IssueRequest struct {
	// Name is the subject's common name: a DP's name, an endpoint's id
	// (what it reports under), an administrator's name.
	Name string
	// Role goes in the subject's Organizational Unit.
	Role Role
	// Hosts are DNS names or IP addresses added as SANs: those a server
	// certificate is valid for. A dp certificate without any gets Name.
	Hosts []string
}

// Issue signs a certificate for req with the CA in dir and writes it to
// prefix.pem and its private key to prefix.key (mode 0600), each replaced
// atomically (a DP reading them never sees half a file).
func Issue(dir string, req IssueRequest, prefix string) error {
	if err := validName(req.Name); err != nil {
		return err
	}
	if _, err := ParseRole(string(req.Role)); err != nil {
		return err
	}
	caCert, caKey, err := loadCA(dir)
	if err != nil {
		return err
	}
	hosts := req.Hosts
	if len(hosts) == 0 && req.Role == RoleDP {
		hosts = []string{req.Name}
	}
	key, serial, now, err := newSubject("certificate key")
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: req.Name, OrganizationalUnit: []string{string(req.Role)}},
		NotBefore:    now.Add(-backdate),
		NotAfter:     now.Add(LeafValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if req.Role == RoleDP {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	}
	if tmpl.NotAfter.After(caCert.NotAfter) {
		tmpl.NotAfter = caCert.NotAfter
	}
	for _, h := range hosts {
		h = strings.TrimSpace(h)
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			continue
		}
		if !validHost(h) {
			return fmt.Errorf("host %q: %w: want a DNS name or an IP address", h, ErrBadName)
		}
		tmpl.DNSNames = append(tmpl.DNSNames, h)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey)
	if err != nil {
		return fmt.Errorf("certificate for %s: %w", req.Name, err)
	}
	return writePair(prefix+".pem", prefix+".key", der, key)
}

// loadCA reads the CA of dir.
func loadCA(dir string) (*x509.Certificate, crypto.Signer, error) {
	certFile, keyFile := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	certs, err := readCerts(certFile)
	if err != nil {
		return nil, nil, fmt.Errorf("%w (make a CA with: dpcache ca init --dir %s)", err, dir)
	}
	cert := certs[0]
	if !cert.IsCA {
		return nil, nil, fmt.Errorf("CA certificate %s: %w: not a CA certificate", certFile, ErrBadFile)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("CA key %s: %w: %v", keyFile, ErrBadFile, pathCause(err))
	}
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		return nil, nil, fmt.Errorf("CA key %s: %w: no PEM block", keyFile, ErrBadFile)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("CA key %s: %w: %v", keyFile, ErrBadFile, err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("CA key %s: %w: not a signing key", keyFile, ErrBadFile)
	}
	if pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(cert.PublicKey) {
		return nil, nil, fmt.Errorf("CA key %s: %w: it does not match %s", keyFile, ErrBadFile, certFile)
	}
	return cert, signer, nil
}

// readCerts reads the PEM certificates of file; at least one.
func readCerts(file string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("certificate file %s: %w: %v", file, ErrBadFile, pathCause(err))
	}
	var out []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate file %s: %w: %v", file, ErrBadFile, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("certificate file %s: %w: no PEM certificate in it (want \"-----BEGIN CERTIFICATE-----\" blocks)", file, ErrBadFile)
	}
	return out, nil
}

// writePair writes a certificate and its key, the key first (mode 0600),
// each by a rename so that a reader sees the old file or the new one.
func writePair(certFile, keyFile string, der []byte, key *ecdsa.PrivateKey) error {
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("key %s: %w", keyFile, err)
	}
	if err := writeAtomic(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}), 0o600); err != nil {
		return err
	}
	return writeAtomic(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

func writeAtomic(file string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", file, pathCause(err))
	}
	tmp := f.Name()
	err = f.Chmod(mode)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, file)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", file, pathCause(err))
	}
	return nil
}

// newSubject returns what a new certificate starts from: a P-256 key, a
// random serial number and the time of issue. what names the key in errors.
func newSubject(what string) (*ecdsa.PrivateKey, *big.Int, time.Time, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, time.Time{}, fmt.Errorf("%s: %w", what, err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, time.Time{}, err
	}
	return key, serial, time.Now(), nil
}

// newSerial returns a random 128-bit serial number (positive, as RFC 5280
// wants).
func newSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	return s.Add(s, big.NewInt(1)), nil
}

// validName accepts a common name: 1 to 64 printable characters (RFC 5280's
// upper bound), no '/' (an endpoint reports under it, and ids have none).
func validName(name string) error {
	if name == "" || len(name) > 64 || strings.ContainsFunc(name, func(r rune) bool { return r == '/' || !unicode.IsPrint(r) }) {
		return fmt.Errorf("name %q: %w: want 1 to 64 printable characters, no '/'", name, ErrBadName)
	}
	return nil
}

// validHost accepts a DNS name (letters, digits, '-', '.', a leading "*."
// wildcard).
func validHost(h string) bool {
	h = strings.TrimPrefix(h, "*.")
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || strings.HasPrefix(label, "-") || strings.HasSuffix(label, "-") {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return false
			}
		}
	}
	return true
}

// pathCause drops the operation and path of an *os.PathError: the caller
// names the file already.
func pathCause(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
