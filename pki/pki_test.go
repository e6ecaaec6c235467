package pki_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dpcache/dpcache/pki"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// newCA makes a CA in a temporary directory and returns the directory.
func newCA(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	if err := pki.InitCA(dir, "test CA"); err != nil {
		t.Fatal(err)
	}
	return dir
}

// issue issues a certificate and returns its prefix.
func issue(t *testing.T, ca, name string, role pki.Role, hosts ...string) string {
	t.Helper()
	prefix := filepath.Join(t.TempDir(), name)
	if err := pki.Issue(ca, pki.IssueRequest{Name: name, Role: role, Hosts: hosts}, prefix); err != nil {
		t.Fatal(err)
	}
	return prefix
}

func readCert(t *testing.T, file string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatalf("%s: no PEM", file)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestInitCA_Files(t *testing.T) {
	t.Parallel()
	dir := newCA(t)
	fi, err := os.Stat(filepath.Join(dir, pki.CAKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("ca.key mode %v, want 0600", fi.Mode().Perm())
	}
	ca := readCert(t, filepath.Join(dir, pki.CACertFile))
	if !ca.IsCA || !ca.MaxPathLenZero || ca.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("CA certificate: IsCA %v, MaxPathLenZero %v, key usage %b", ca.IsCA, ca.MaxPathLenZero, ca.KeyUsage)
	}
	if d := ca.NotAfter.Sub(ca.NotBefore); d < pki.CAValidity || d > pki.CAValidity+time.Hour {
		t.Errorf("CA validity %v, want %v", d, pki.CAValidity)
	}
	if err := pki.InitCA(dir, "again"); !errors.Is(err, pki.ErrExists) {
		t.Errorf("InitCA over an existing CA: %v, want ErrExists", err)
	}
}

func TestIssue_RolesAndUsages(t *testing.T) {
	t.Parallel()
	ca := newCA(t)
	roots := x509.NewCertPool()
	roots.AddCert(readCert(t, filepath.Join(ca, pki.CACertFile)))
	for _, tc := range []struct {
		role     pki.Role
		hosts    []string
		server   bool
		wantDNS  []string
		wantIPs  int
		wantName string
	}{
		{pki.RoleDP, []string{"127.0.0.1", "dp1.example.com"}, true, []string{"dp1.example.com"}, 1, "dp1"},
		{pki.RoleDP, nil, true, []string{"dp2"}, 0, "dp2"},
		{pki.RoleEndpoint, nil, false, nil, 0, "pc-42"},
		{pki.RoleAdmin, nil, false, nil, 0, "alice"},
	} {
		prefix := issue(t, ca, tc.wantName, tc.role, tc.hosts...)
		c := readCert(t, prefix+".pem")
		name, role := pki.Identify(c)
		if name != tc.wantName || role != tc.role {
			t.Errorf("%s: Identify = %q, %q", tc.wantName, name, role)
		}
		if !slices.Equal(c.DNSNames, tc.wantDNS) || len(c.IPAddresses) != tc.wantIPs {
			t.Errorf("%s: SANs %v %v, want %v and %d IPs", tc.wantName, c.DNSNames, c.IPAddresses, tc.wantDNS, tc.wantIPs)
		}
		if c.SerialNumber.BitLen() < 64 || c.SerialNumber.BitLen() > 129 {
			t.Errorf("%s: serial of %d bits", tc.wantName, c.SerialNumber.BitLen())
		}
		if d := c.NotAfter.Sub(c.NotBefore); d < pki.LeafValidity || d > pki.LeafValidity+time.Hour {
			t.Errorf("%s: validity %v", tc.wantName, d)
		}
		_, err := c.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		if err != nil {
			t.Errorf("%s: not a client certificate of the CA: %v", tc.wantName, err)
		}
		_, err = c.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
		if (err == nil) != tc.server {
			t.Errorf("%s: server certificate: %v, want %v", tc.wantName, err, tc.server)
		}
		fi, err := os.Stat(prefix + ".key")
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: key file %v, %v; want mode 0600", tc.wantName, fi, err)
		}
	}
}

func TestIssue_Errors(t *testing.T) {
	t.Parallel()
	ca := newCA(t)
	out := filepath.Join(t.TempDir(), "x")
	for _, tc := range []struct {
		dir  string
		req  pki.IssueRequest
		want error
	}{
		{ca, pki.IssueRequest{Name: "", Role: pki.RoleDP}, pki.ErrBadName},
		{ca, pki.IssueRequest{Name: "a/b", Role: pki.RoleEndpoint}, pki.ErrBadName},
		{ca, pki.IssueRequest{Name: "x", Role: "root"}, pki.ErrBadRole},
		{ca, pki.IssueRequest{Name: "x", Role: pki.RoleDP, Hosts: []string{"bad host"}}, pki.ErrBadName},
		{filepath.Join(t.TempDir(), "none"), pki.IssueRequest{Name: "x", Role: pki.RoleDP}, pki.ErrBadFile},
	} {
		if err := pki.Issue(tc.dir, tc.req, out); !errors.Is(err, tc.want) {
			t.Errorf("Issue(%+v): %v, want %v", tc.req, err, tc.want)
		}
	}
	if _, err := os.Stat(out + ".pem"); err == nil {
		t.Error("a failed Issue wrote a certificate")
	}
}

// openssl, the reference: it shows the role as OU and verifies the chain
// for the purposes each role has.
func TestIssue_OpenSSL(t *testing.T) {
	t.Parallel()
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed")
	}
	ca := newCA(t)
	dp := issue(t, ca, "dp1", pki.RoleDP, "127.0.0.1")
	ep := issue(t, ca, "pc-1", pki.RoleEndpoint)
	run := func(args ...string) (string, error) {
		out, err := exec.Command(openssl, args...).CombinedOutput()
		return string(out), err
	}
	text, err := run("x509", "-in", dp+".pem", "-noout", "-text")
	if err != nil {
		t.Fatalf("openssl x509: %v\n%s", err, text)
	}
	for _, want := range []string{"OU = dp, CN = dp1", "TLS Web Server Authentication, TLS Web Client Authentication", "IP Address:127.0.0.1", "CA:FALSE"} {
		if !strings.Contains(text, want) && !(want == "CA:FALSE" && !strings.Contains(text, "CA:TRUE")) {
			t.Errorf("openssl x509 -text lacks %q:\n%s", want, text)
		}
	}
	caPEM := filepath.Join(ca, pki.CACertFile)
	for _, tc := range []struct {
		file, purpose string
		ok            bool
	}{
		{dp + ".pem", "sslserver", true},
		{dp + ".pem", "sslclient", true},
		{ep + ".pem", "sslclient", true},
		{ep + ".pem", "sslserver", false},
	} {
		out, err := run("verify", "-CAfile", caPEM, "-purpose", tc.purpose, tc.file)
		if (err == nil) != tc.ok {
			t.Errorf("openssl verify -purpose %s %s: %v, want ok=%v\n%s", tc.purpose, filepath.Base(tc.file), err, tc.ok, out)
		}
	}
	other := newCA(t)
	if out, err := run("verify", "-CAfile", filepath.Join(other, pki.CACertFile), dp+".pem"); err == nil {
		t.Errorf("openssl verify with another CA succeeded:\n%s", out)
	}
}

// A handshake between ServerConfig with client CAs and ClientConfig: the
// roles and the CA are checked, and a replaced certificate is served to
// the next handshake without a new config.
func TestServerConfig_ReloadAndVerify(t *testing.T) {
	t.Parallel()
	ca := newCA(t)
	dir := t.TempDir()
	srvPrefix := filepath.Join(dir, "srv")
	if err := pki.Issue(ca, pki.IssueRequest{Name: "dp1", Role: pki.RoleDP, Hosts: []string{"127.0.0.1"}}, srvPrefix); err != nil {
		t.Fatal(err)
	}
	kp, err := pki.LoadKeyPair(srvPrefix+".pem", srvPrefix+".key", quiet)
	if err != nil {
		t.Fatal(err)
	}
	caPool, err := pki.LoadCertPool(filepath.Join(ca, pki.CACertFile), quiet)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", pki.ServerConfig(kp, caPool, tls.RequireAndVerifyClientCert, nil))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.(*tls.Conn).Handshake()
			c.Write([]byte("x"))
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })

	ep := issue(t, ca, "pc-1", pki.RoleEndpoint)
	epKP, err := pki.LoadKeyPair(ep+".pem", ep+".key", quiet)
	if err != nil {
		t.Fatal(err)
	}
	dial := func(cfg *tls.Config) (*x509.Certificate, error) {
		d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: cfg}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := d.DialContext(ctx, "tcp", ln.Addr().String())
		if err != nil {
			return nil, err
		}
		defer c.Close()
		if _, err := c.Read(make([]byte, 1)); err != nil {
			return nil, err
		}
		return c.(*tls.Conn).ConnectionState().PeerCertificates[0], nil
	}
	got, err := dial(pki.ClientConfig(epKP, caPool, pki.RoleDP))
	if err != nil {
		t.Fatalf("endpoint to DP: %v", err)
	}
	first := got.SerialNumber

	// The server must be a dp.
	if _, err := dial(pki.ClientConfig(epKP, caPool, pki.RoleAdmin)); err == nil || !strings.Contains(err.Error(), `want "admin"`) {
		t.Errorf("wanting an admin server: %v", err)
	}
	// No client certificate, or one of another CA: refused.
	if _, err := dial(pki.ClientConfig(nil, caPool, "")); err == nil {
		t.Error("a client without a certificate was accepted")
	}
	other := newCA(t)
	stranger := issue(t, other, "pc-1", pki.RoleEndpoint)
	strangerKP, err := pki.LoadKeyPair(stranger+".pem", stranger+".key", quiet)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dial(pki.ClientConfig(strangerKP, caPool, "")); err == nil {
		t.Error("a client certificate of another CA was accepted")
	}
	otherPool, err := pki.LoadCertPool(filepath.Join(other, pki.CACertFile), quiet)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dial(pki.ClientConfig(epKP, otherPool, "")); err == nil {
		t.Error("a server certificate of another CA was accepted")
	}

	// Rotation: a new certificate at the same paths is served once seen.
	if err := pki.Issue(ca, pki.IssueRequest{Name: "dp1", Role: pki.RoleDP, Hosts: []string{"127.0.0.1"}}, srvPrefix); err != nil {
		t.Fatal(err)
	}
	if err := kp.Reload(); err != nil {
		t.Fatal(err)
	}
	got, err = dial(pki.ClientConfig(epKP, caPool, pki.RoleDP))
	if err != nil {
		t.Fatal(err)
	}
	if got.SerialNumber.Cmp(first) == 0 {
		t.Error("the replaced certificate is not served after Reload")
	}
}

// A key pair whose files are half replaced keeps the previous pair.
func TestKeyPair_BadReloadKeepsPrevious(t *testing.T) {
	t.Parallel()
	ca := newCA(t)
	a := issue(t, ca, "dp1", pki.RoleDP)
	b := issue(t, ca, "dp1", pki.RoleDP)
	kp, err := pki.LoadKeyPair(a+".pem", a+".key", quiet)
	if err != nil {
		t.Fatal(err)
	}
	before := kp.Certificate()
	data, err := os.ReadFile(b + ".pem")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(a+".pem", data, 0o644); err != nil { // the key is a's still
		t.Fatal(err)
	}
	if err := kp.Reload(); !errors.Is(err, pki.ErrBadFile) {
		t.Errorf("Reload of a mismatched pair: %v, want ErrBadFile", err)
	}
	if kp.Certificate() != before {
		t.Error("a failed reload replaced the pair")
	}
	if _, err := pki.LoadKeyPair(a+".pem", filepath.Join(t.TempDir(), "none.key"), quiet); !errors.Is(err, pki.ErrBadFile) || !strings.Contains(err.Error(), "none.key") {
		t.Errorf("LoadKeyPair without a key: %v", err)
	}
}
