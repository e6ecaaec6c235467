package testenv

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// curl runs curl with args (and a 30 s limit) and returns stdout, stderr
// and the exit code.
func curl(t *testing.T, args ...string) ([]byte, string, int) {
	t.Helper()
	bin := RequireBinary(t, "curl")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"-sS", "--max-time", "20"}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("curl %v: %v", args, err)
	}
	return stdout.Bytes(), stderr.String(), code
}

func TestVsftpd_UserServesFilesResumesAndLogs(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	data := writeFile(t, root, "blobs/sha256/aa.bin", 300_000)
	user := UniqueUserName(t, "dptestenv")
	t.Run("server", func(t *testing.T) {
		v := StartVsftpd(t, root, VsftpdOptions{User: user, Password: "pw-" + randomToken()[:8]})
		if !strings.HasPrefix(v.URL, "ftp://"+user+":") || !strings.HasSuffix(v.URL, "@"+v.Addr+"/") {
			t.Errorf("URL = %q, want ftp://USER:PASSWORD@%s/", v.URL, v.Addr)
		}
		if home, err := userHome(user); err != nil || home != root {
			t.Errorf("account %q: home %q, %v; want %s", user, home, err, root)
		}
		got, stderr, code := curl(t, v.URL+"blobs/sha256/aa.bin")
		if code != 0 || !bytes.Equal(got, data) {
			t.Fatalf("curl: exit %d, %d bytes (%s); want the file's %d bytes", code, len(got), stderr, len(data))
		}
		// Resume: REST then RETR, only the rest is sent.
		got, stderr, code = curl(t, "-C", "100000", v.URL+"blobs/sha256/aa.bin")
		if code != 0 || !bytes.Equal(got, data[100_000:]) {
			t.Fatalf("curl -C 100000: exit %d, %d bytes (%s)", code, len(got), stderr)
		}
		_, _, code = curl(t, v.URL+"missing.bin")
		if code == 0 {
			t.Error("curl of a missing file succeeded")
		}
		wrong := "ftp://" + user + ":wrong@" + v.Addr + "/blobs/sha256/aa.bin"
		if _, stderr, code := curl(t, wrong); code != 67 {
			t.Errorf("wrong password: curl exit %d (%s), want 67 (login denied)", code, stderr)
		}
		WaitFor(t, 10*time.Second, "two downloads in the vsftpd log", func() bool { return len(v.Transfers(t)) == 2 })
		tr := v.Transfers(t)
		want := []FTPTransfer{
			{Path: filepath.Join(root, "blobs/sha256/aa.bin"), Bytes: 300_000, OK: true},
			{Path: filepath.Join(root, "blobs/sha256/aa.bin"), Bytes: 200_000, OK: true},
		}
		for i := range want {
			if tr[i] != want[i] {
				t.Errorf("transfer %d = %+v, want %+v", i, tr[i], want[i])
			}
		}
		if got := v.BytesServed(t, "aa.bin"); got != 500_000 {
			t.Errorf("BytesServed = %d, want 500000", got)
		}
		cmds := strings.Join(v.Commands(t), "\n")
		for _, c := range []string{"REST 100000", "RETR aa.bin", "PASS <password>"} {
			if !strings.Contains(cmds, c) {
				t.Errorf("commands do not include %q:\n%s", c, cmds)
			}
		}
		if strings.Contains(readFile(v.LogPath), v.Password) {
			t.Error("the log shows the password")
		}
		v.Stop(t)
		if _, _, code := curl(t, v.URL+"blobs/sha256/aa.bin"); code != 7 {
			t.Errorf("after Stop: curl exit %d, want 7 (connection refused)", code)
		}
	})
	if _, err := userHome(user); err == nil {
		t.Errorf("account %q still exists after the cleanup", user)
	}
}

// TestVsftpd_StopEndsSessions: sessions run in their own sessions
// (setsid), yet Stop ends them, as a crash of the server would: a slow
// download in progress fails.
func TestVsftpd_StopEndsSessions(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	writeFile(t, root, "big.bin", 2<<20)
	v := StartVsftpd(t, root, VsftpdOptions{MaxRate: 128 << 10})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, RequireBinary(t, "curl"), "-sS", "-o", "/dev/null", v.URL+"big.bin")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	WaitFor(t, 10*time.Second, "the download to start", func() bool {
		return strings.Contains(strings.Join(v.Commands(t), "\n"), "RETR big.bin")
	})
	sessions := descendants(v.Pid())
	if len(sessions) == 0 {
		t.Fatal("no session process under the listener")
	}
	v.Stop(t)
	err := cmd.Wait()
	if ctx.Err() != nil {
		t.Fatal("curl still downloading 30 s after Stop")
	}
	if err == nil {
		t.Errorf("curl finished the download although vsftpd was stopped")
	}
	for _, pid := range sessions {
		if alive(pid) {
			t.Errorf("session process %d outlived Stop", pid)
		}
	}
}

func TestVsftpd_Anonymous(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	data := writeFile(t, root, "updates/f.bin", 5000)
	v := StartVsftpd(t, root, VsftpdOptions{})
	if v.URL != "ftp://"+v.Addr+"/" {
		t.Errorf("URL = %q, want ftp://%s/", v.URL, v.Addr)
	}
	got, stderr, code := curl(t, v.URL+"updates/f.bin")
	if code != 0 || !bytes.Equal(got, data) {
		t.Fatalf("anonymous curl: exit %d, %d bytes (%s)", code, len(got), stderr)
	}
}

func TestVsftpd_BadOptions(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	for _, opts := range []VsftpdOptions{{User: "a:b", Password: "x"}, {Password: "only"}} {
		f := runFake(t, func(tb testing.TB) { StartVsftpd(tb, root, opts) })
		if !f.failed && !f.skipped {
			t.Errorf("StartVsftpd(%+v) neither failed nor skipped", opts)
		}
	}
}

func TestSquid_AuthTunnelAndLog(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	data := writeFile(t, root, "blob.bin", 200_000)
	ca := NewTestCA(t)
	origin := StartNginxTLS(t, root, ca, NginxOptions{})
	s := StartSquid(t, SquidOptions{User: "tuser", Password: "tpass-" + randomToken()[:6]})
	if !strings.HasPrefix(s.URL, "http://tuser:") || s.ProxyURL().Host != s.Addr {
		t.Errorf("URL = %q, want http://tuser:PASSWORD@%s", s.URL, s.Addr)
	}

	through := func(proxy *url.URL) *http.Client {
		tr := &http.Transport{Proxy: http.ProxyURL(proxy), TLSClientConfig: &tls.Config{RootCAs: ca.Pool}}
		t.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr}
	}
	client := through(s.ProxyURL())
	// Plain HTTP: squid fetches for the client.
	status, body := get(t, client, origin.URL+"blob.bin", "")
	if status != 200 || !bytes.Equal(body, data) {
		t.Fatalf("GET through squid: status %d, %d bytes", status, len(body))
	}
	// HTTPS: a CONNECT tunnel to a non-443 port.
	status, body = get(t, client, origin.TLSURL+"blob.bin", "")
	if status != 200 || !bytes.Equal(body, data) {
		t.Fatalf("HTTPS GET through squid: status %d, %d bytes", status, len(body))
	}
	client.Transport.(*http.Transport).CloseIdleConnections() // ends the tunnel, which squid then logs

	bad := s.ProxyURL()
	bad.User = url.UserPassword("tuser", "wrong")
	status, _ = get(t, through(bad), origin.URL+"blob.bin", "")
	if status != http.StatusProxyAuthRequired {
		t.Errorf("wrong password: status %d, want 407", status)
	}

	var get200, tunnel, denied bool
	check := func() bool {
		get200, tunnel, denied = false, false, false
		for _, e := range s.Requests(t) {
			switch {
			case e.Method == "GET" && e.Status == 200 && e.User == "tuser" && strings.HasSuffix(e.URL, "/blob.bin") && e.Bytes >= int64(len(data)):
				get200 = true
			case e.Method == "CONNECT" && e.Status == 200 && e.Result == "TCP_TUNNEL" && e.URL == origin.TLSAddr && e.Bytes >= int64(len(data)):
				tunnel = true
			case e.Status == 407 && e.Result == "TCP_DENIED":
				denied = true
			}
		}
		return get200 && tunnel && denied
	}
	if !poll(10*time.Second, check) {
		t.Errorf("squid log: GET 200=%v CONNECT tunnel=%v 407=%v; entries %+v", get200, tunnel, denied, s.Requests(t))
	}
	if got := s.BytesServed(t, "blob.bin"); got < int64(len(data)) {
		t.Errorf("BytesServed(blob.bin) = %d, want at least %d", got, len(data))
	}
	if strings.Contains(readFile(s.AccessLog), s.Password) {
		t.Error("the access log shows the password")
	}
}

func TestSquid_Open(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	data := writeFile(t, root, "f", 1000)
	origin := StartNginx(t, root, NginxOptions{})
	s := StartSquid(t, SquidOptions{})
	if s.URL != "http://"+s.Addr {
		t.Errorf("URL = %q", s.URL)
	}
	got, stderr, code := curl(t, "-x", s.URL, origin.URL+"f")
	if code != 0 || !bytes.Equal(got, data) {
		t.Fatalf("curl through the open squid: exit %d (%s)", code, stderr)
	}
	s.Stop(t)
	if _, _, code := curl(t, "-x", s.URL, origin.URL+"f"); code == 0 {
		t.Error("curl through a stopped squid succeeded")
	}
}

func TestTestCA(t *testing.T) {
	t.Parallel()
	ca := NewTestCA(t)
	certFile, keyFile := ca.Issue(t, "127.0.0.1", "updates.example.test")
	pemCA, err := os.ReadFile(ca.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemCA) {
		t.Fatal("CAFile holds no PEM certificate")
	}
	pemCert, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(pemCert)
	if block == nil {
		t.Fatal("certificate file holds no PEM block")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{"127.0.0.1", "updates.example.test"} {
		if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: host}); err != nil {
			t.Errorf("certificate for %s does not verify against the CA: %v", host, err)
		}
	}
	if _, err := cert.Verify(x509.VerifyOptions{DNSName: "other.example.test", Roots: pool}); err == nil {
		t.Error("certificate verifies for a host it was not issued for")
	}
	if _, err := tls.LoadX509KeyPair(certFile, keyFile); err != nil {
		t.Errorf("key pair: %v", err)
	}
	if fi, err := os.Stat(keyFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v (%v), want 0600", fi.Mode().Perm(), err)
	}
	// Two issues never share files.
	c2, _ := ca.Issue(t)
	if c2 == certFile {
		t.Error("second Issue reused the file name")
	}
}

func TestNginxTLS(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	data := writeFile(t, root, "f.bin", 10_000)
	ca := NewTestCA(t)
	n := StartNginxTLS(t, root, ca, NginxOptions{Prefix: "/updates/"})
	if !strings.HasPrefix(n.TLSURL, "https://127.0.0.1:") || !strings.HasSuffix(n.TLSURL, "/updates/") {
		t.Errorf("TLSURL = %q", n.TLSURL)
	}
	trusted := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool}}
	t.Cleanup(trusted.CloseIdleConnections)
	status, body := get(t, &http.Client{Transport: trusted}, n.TLSURL+"f.bin", "")
	if status != 200 || !bytes.Equal(body, data) {
		t.Fatalf("HTTPS GET: status %d, %d bytes", status, len(body))
	}
	status, _ = get(t, newClient(t), n.URL+"f.bin", "")
	if status != 200 {
		t.Errorf("plain GET: status %d", status)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, n.TLSURL+"f.bin", nil)
	untrusted := &http.Transport{}
	t.Cleanup(untrusted.CloseIdleConnections)
	resp, err := (&http.Client{Transport: untrusted}).Do(req)
	if err == nil {
		resp.Body.Close()
		t.Fatal("a client without the test CA trusted the server")
	}
	var unknown x509.UnknownAuthorityError
	if !errors.As(err, &unknown) {
		t.Errorf("error %v, want an unknown authority", err)
	}
}
