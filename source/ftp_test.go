package source_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/dpcache/dpcache/e2e/testenv"
	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/source"
)

// startFTP serves r's repository from a real vsftpd with a fresh account.
func startFTP(t *testing.T, r *repo, opts testenv.VsftpdOptions) *testenv.Vsftpd {
	t.Helper()
	if opts.User == "" {
		opts.User = testenv.UniqueUserName(t, "dpsrc")
		opts.Password = "pw-" + opts.User
	}
	return testenv.StartVsftpd(t, r.root, opts)
}

// TestFTP_ResumeUsesREST: a blob read from an offset is asked with REST, and
// vsftpd sends only the bytes from there (its log says how many).
func TestFTP_ResumeUsesREST(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	v := startFTP(t, r, testenv.VsftpdOptions{})
	src := parse(t, v.URL, source.DefaultOptions())
	d, content := r.big()
	const off = 654_321
	got, err := readBlob(testCtx(t), src, d, off, io.ReadAll)
	checkBytes(t, "blob from offset", got, content[off:], err)

	testenv.WaitFor(t, 10*time.Second, "the transfer in vsftpd's log", func() bool { return len(v.Transfers(t)) == 1 })
	tr := v.Transfers(t)[0]
	if !tr.OK || tr.Bytes != int64(len(content)-off) || !strings.HasSuffix(tr.Path, manifest.BlobPath(d)) {
		t.Errorf("vsftpd transfer %+v, want OK with %d bytes of %s", tr, len(content)-off, manifest.BlobPath(d))
	}
	cmds := strings.Join(v.Commands(t), "\n")
	for _, want := range []string{fmt.Sprintf("REST %d", off), "RETR " + manifest.BlobPath(d), "SIZE " + manifest.BlobPath(d), "EPSV"} {
		if !strings.Contains(cmds, want) {
			t.Errorf("the client did not send %q; commands:\n%s", want, cmds)
		}
	}
}

// TestFTP_OneLoginForManyRequests: the pool keeps the logged-in control
// connection between requests, so documents cost one login, not one each.
func TestFTP_OneLoginForManyRequests(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	v := startFTP(t, r, testenv.VsftpdOptions{})
	src := parse(t, v.URL, source.DefaultOptions())
	ctx := testCtx(t)
	for range 3 {
		if _, err := src.Latest(ctx, r.product); err != nil {
			t.Fatal(err)
		}
		if _, err := src.Manifest(ctx, r.product, r.version); err != nil {
			t.Fatal(err)
		}
		got, err := readBlob(ctx, src, r.digests[2], 0, io.ReadAll)
		checkBytes(t, "blob", got, r.blobs[r.digests[2]], err)
	}
	logins := 0
	for _, c := range v.Commands(t) {
		if strings.HasPrefix(c, "USER ") {
			logins++
		}
	}
	if logins != 1 {
		t.Errorf("%d logins for 15 sequential requests, want 1 (a pooled connection)", logins)
	}
}

// TestFTP_Anonymous: without a user in the URL, the source logs in as
// anonymous.
func TestFTP_Anonymous(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	v := testenv.StartVsftpd(t, r.root, testenv.VsftpdOptions{})
	src := parse(t, v.URL, source.DefaultOptions())
	testSourceBasics(t, r, src)
	if cmds := strings.Join(v.Commands(t), "\n"); !strings.Contains(cmds, "USER anonymous") {
		t.Errorf("no anonymous login in:\n%s", cmds)
	}
}

// testSourceBasics reads latest, manifest and the big blob.
func testSourceBasics(t *testing.T, r *repo, src source.Source) {
	t.Helper()
	ctx := testCtx(t)
	l, err := src.Latest(ctx, r.product)
	if err != nil {
		t.Fatalf("%s: Latest: %v", src, err)
	}
	if l.Source != src.String() {
		t.Errorf("Signed.Source = %q, want %q", l.Source, src)
	}
	if _, err := r.trust.VerifyLatest(l.Data, l.Signature); err != nil {
		t.Errorf("latest does not verify: %v", err)
	}
	d, content := r.big()
	got, err := readBlob(ctx, src, d, 0, io.ReadAll)
	checkBytes(t, "big blob", got, content, err)
}

// TestFTP_WrongPassword: a refused login is ErrUnavailable, says so, and
// shows no password.
func TestFTP_WrongPassword(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	v := startFTP(t, r, testenv.VsftpdOptions{})
	u, _ := url.Parse(v.URL)
	u.User = url.UserPassword(v.User, "not-"+v.Password)
	src := parse(t, u.String(), source.DefaultOptions())
	_, err := src.Latest(testCtx(t), r.product)
	checkErr(t, src, err, source.ErrUnavailable)
	if err != nil && (!strings.Contains(err.Error(), "login refused") || !strings.Contains(err.Error(), "530")) {
		t.Errorf("error %q does not say the login was refused (530)", err)
	}
	rc, err := src.Blob(testCtx(t), r.digests[1], 0)
	if err == nil {
		rc.Close()
	}
	checkErr(t, src, err, source.ErrUnavailable)
	for _, s := range []string{err.Error(), src.String()} {
		if strings.Contains(s, v.Password) {
			t.Errorf("%q shows the password", s)
		}
	}
}

// TestFTP_Unreachable: a closed port and a server that never greets are
// ErrUnavailable within the timeout.
func TestFTP_Unreachable(t *testing.T) {
	t.Parallel()
	opts := source.Options{Timeout: 500 * time.Millisecond}
	for name, addr := range map[string]string{"closed": closedAddr(t), "silent": silentListener(t)} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			src := parse(t, "ftp://u:secretPW@"+addr+"/repo/", opts)
			_, err := src.Latest(testCtx(t), "kes")
			checkErr(t, src, err, source.ErrUnavailable)
			rc, err := src.Blob(testCtx(t), missingDigest, 0)
			if err == nil {
				rc.Close()
			}
			checkErr(t, src, err, source.ErrUnavailable)
			if strings.Contains(err.Error(), "secretPW") {
				t.Errorf("error %q shows the password", err)
			}
		})
	}
}

// TestFTP_ServerDiesMidTransfer: when vsftpd goes away in the middle of a
// blob, the read fails (never a silent short blob).
func TestFTP_ServerDiesMidTransfer(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	v := startFTP(t, r, testenv.VsftpdOptions{MaxRate: 256 << 10})
	src := parse(t, v.URL, source.DefaultOptions())
	d, content := r.big()
	rc, err := src.Blob(testCtx(t), d, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	buf := make([]byte, 100_000)
	if _, err := io.ReadFull(rc, buf); err != nil {
		t.Fatal(err)
	}
	v.Stop(t)
	rest, err := io.ReadAll(rc)
	if err == nil {
		t.Fatalf("read %d more bytes (%d of %d) and no error after vsftpd stopped", len(rest), len(buf)+len(rest), len(content))
	}
	if !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, source.ErrUnavailable) {
		t.Errorf("error %v, want io.ErrUnexpectedEOF or ErrUnavailable", err)
	}
	if !strings.Contains(err.Error(), src.String()) {
		t.Errorf("error %q does not name the source", err)
	}
}

// TestFTP_ContextEndsRead: ending the context stops a slow transfer at
// once.
func TestFTP_ContextEndsRead(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	v := startFTP(t, r, testenv.VsftpdOptions{MaxRate: 64 << 10})
	src := parse(t, v.URL, source.DefaultOptions())
	d, _ := r.big()
	ctx, cancel := context.WithCancel(testCtx(t))
	rc, err := src.Blob(ctx, d, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, err := io.ReadFull(rc, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	cancel()
	_, err = io.ReadAll(rc)
	if err == nil || !errors.Is(err, source.ErrUnavailable) {
		t.Fatalf("read after the context ended: %v, want an error wrapping ErrUnavailable", err)
	}
}
