package source_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/source"
)

// blobContent returns n deterministic bytes and their digest.
func blobContent(n int) ([]byte, string) {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>8)
	}
	return b, manifest.SHA256Hex(b)
}

// recorder keeps the requests a test server received.
type recorder struct {
	mu   sync.Mutex
	reqs []*http.Request
}

func (rec *recorder) add(r *http.Request) {
	rec.mu.Lock()
	rec.reqs = append(rec.reqs, r.Clone(r.Context()))
	rec.mu.Unlock()
}

func (rec *recorder) all() []*http.Request {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return append([]*http.Request(nil), rec.reqs...)
}

// serve starts an httptest server whose handler is h, closed at cleanup.
func serve(t *testing.T, h http.HandlerFunc) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

// TestHTTP_RangeIgnored: a server that ignores Range answers 200 with the
// whole blob; the source skips the first offset bytes itself.
func TestHTTP_RangeIgnored(t *testing.T) {
	t.Parallel()
	content, digest := blobContent(100_003)
	var rec recorder
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		rec.add(r)
		w.Header().Set("Content-Length", strconv.Itoa(len(content)))
		w.Write(content)
	})
	src := parse(t, srv.URL, source.DefaultOptions())
	for _, off := range []int64{0, 1, 4097, 100_002, 100_003} {
		got, err := readBlob(testCtx(t), src, digest, off, io.ReadAll)
		checkBytes(t, fmt.Sprintf("offset %d", off), got, content[off:], err)
	}
	// The source did ask for a range: the server was the one ignoring it.
	reqs := rec.all()
	if len(reqs) != 5 {
		t.Fatalf("server saw %d requests, want 5", len(reqs))
	}
	if got := reqs[0].Header.Get("Range"); got != "" {
		t.Errorf("offset 0 sent Range %q, want none", got)
	}
	if got := reqs[2].Header.Get("Range"); got != "bytes=4097-" {
		t.Errorf("offset 4097 sent Range %q, want bytes=4097-", got)
	}
	if got := reqs[2].URL.Path; got != "/blobs/sha256/"+digest {
		t.Errorf("request path %q, want /blobs/sha256/%s", got, digest)
	}
}

// TestHTTP_RangeHonoured checks a standard Range server (http.ServeContent)
// at several offsets, including one that asks the server for a single byte.
func TestHTTP_RangeHonoured(t *testing.T) {
	t.Parallel()
	content, digest := blobContent(70_001)
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "blob", time.Time{}, bytes.NewReader(content))
	})
	src := parse(t, srv.URL, source.DefaultOptions())
	for _, off := range []int64{0, 1, 35_001, 70_000} {
		got, err := readBlob(testCtx(t), src, digest, off, io.ReadAll)
		checkBytes(t, fmt.Sprintf("offset %d", off), got, content[off:], err)
	}
}

// TestHTTP_ContentRange: a 206 whose Content-Range does not start at the
// asked offset would splice the wrong bytes into a resumed file.
func TestHTTP_ContentRange(t *testing.T) {
	t.Parallel()
	content, digest := blobContent(100)
	const off = 10
	tests := []struct {
		name   string
		header string // Content-Range sent with 206; "-" for none
		body   []byte
		ok     bool
	}{
		{name: "right", header: "bytes 10-99/100", body: content[10:], ok: true},
		{name: "unknown length", header: "bytes 10-99/*", body: content[10:], ok: true},
		{name: "from zero", header: "bytes 0-99/100", body: content},
		{name: "one later", header: "bytes 11-99/100", body: content[11:]},
		{name: "missing", header: "-", body: content[10:]},
		{name: "other unit", header: "items 10-99/100", body: content[10:]},
		{name: "garbage", header: "bytes ten-99/100", body: content[10:]},
		{name: "unsatisfied form", header: "bytes */100", body: content[10:]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
				if tt.header != "-" {
					w.Header().Set("Content-Range", tt.header)
				}
				w.WriteHeader(http.StatusPartialContent)
				w.Write(tt.body)
			})
			src := parse(t, srv.URL, source.DefaultOptions())
			got, err := readBlob(testCtx(t), src, digest, off, io.ReadAll)
			if tt.ok {
				checkBytes(t, "206", got, content[off:], err)
				return
			}
			if !errors.Is(err, source.ErrDataLoss) {
				t.Errorf("Content-Range %q for offset %d: error %v, want one wrapping ErrDataLoss", tt.header, off, err)
			}
		})
	}
}

// TestHTTP_Status maps HTTP status codes to the package's sentinels, for
// documents and for blobs.
func TestHTTP_Status(t *testing.T) {
	t.Parallel()
	_, digest := blobContent(10)
	tests := []struct {
		code int
		want error
	}{
		{http.StatusNotFound, source.ErrNotFound},
		{http.StatusGone, source.ErrNotFound},
		{http.StatusInternalServerError, source.ErrUnavailable},
		{http.StatusNotImplemented, source.ErrUnavailable},
		{http.StatusBadGateway, source.ErrUnavailable},
		{http.StatusServiceUnavailable, source.ErrUnavailable},
		{http.StatusGatewayTimeout, source.ErrUnavailable},
		{http.StatusProxyAuthRequired, source.ErrUnavailable},
		{http.StatusForbidden, source.ErrUnavailable},
		{http.StatusTooManyRequests, source.ErrUnavailable},
		{http.StatusRequestedRangeNotSatisfiable, source.ErrDataLoss},
	}
	for _, tt := range tests {
		t.Run(strconv.Itoa(tt.code), func(t *testing.T) {
			t.Parallel()
			srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
				http.Error(w, http.StatusText(tt.code), tt.code)
			})
			src := parse(t, srv.URL, source.DefaultOptions())
			ctx := testCtx(t)
			rc, err := src.Blob(ctx, digest, 5)
			if err == nil {
				rc.Close()
			}
			checkErr(t, src, err, tt.want)
			if tt.code == http.StatusRequestedRangeNotSatisfiable {
				return // only meaningful with a Range
			}
			_, err = src.Latest(ctx, "kes")
			checkErr(t, src, err, tt.want)
			_, err = src.Manifest(ctx, "kes", "1.0")
			checkErr(t, src, err, tt.want)
		})
	}
}

// TestHTTP_SignatureError: a signature that exists but cannot be fetched is
// an error, not a silently missing signature.
func TestHTTP_SignatureError(t *testing.T) {
	t.Parallel()
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, ".minisig") {
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "{}")
	})
	src := parse(t, srv.URL, source.DefaultOptions())
	_, err := src.Latest(testCtx(t), "kes")
	checkErr(t, src, err, source.ErrUnavailable)
}

// hijackAfter answers with the given headers, writes body, then closes the
// connection as a crashed server or a cut link would.
func hijackAfter(t *testing.T, header http.Header, body []byte) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		for k, v := range header {
			w.Header()[k] = v
		}
		w.WriteHeader(http.StatusOK)
		w.Write(body)
		w.(http.Flusher).Flush()
		conn, _, err := w.(http.Hijacker).Hijack()
		if err != nil {
			t.Errorf("Hijack: %v", err)
			return
		}
		conn.Close()
	}
}

// TestHTTP_BodyCutShort: a body shorter than announced is an error wrapping
// io.ErrUnexpectedEOF, after the bytes that did arrive, never a silent EOF.
func TestHTTP_BodyCutShort(t *testing.T) {
	t.Parallel()
	content, digest := blobContent(200_000)
	tests := []struct {
		name   string
		header http.Header
	}{
		{name: "Content-Length", header: http.Header{"Content-Length": {strconv.Itoa(len(content))}}},
		{name: "chunked", header: http.Header{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			half := content[:len(content)/2]
			srv := serve(t, hijackAfter(t, tt.header, half))
			src := parse(t, srv.URL, source.DefaultOptions())
			got, err := readBlob(testCtx(t), src, digest, 0, io.ReadAll)
			if !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("error %v, want one wrapping io.ErrUnexpectedEOF", err)
			}
			if !strings.Contains(err.Error(), src.String()) {
				t.Errorf("error %q does not name the source", err)
			}
			if !bytes.Equal(got, half) {
				t.Errorf("got %d bytes before the error, want the %d sent", len(got), len(half))
			}
			// A document cut short is an error too.
			_, err = src.Latest(testCtx(t), "kes")
			if err == nil {
				t.Fatal("Latest with a cut body: no error")
			}
			if !errors.Is(err, source.ErrUnavailable) && !errors.Is(err, source.ErrDataLoss) {
				t.Errorf("Latest with a cut body: error %v, want ErrUnavailable or ErrDataLoss", err)
			}
		})
	}
}

// hangingServer accepts requests and never answers them (until the client
// gives up or the test ends).
func hangingServer(t *testing.T) *httptest.Server {
	t.Helper()
	done := make(chan struct{})
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-done:
		}
	})
	t.Cleanup(func() { close(done) }) // runs before srv.Close
	return srv
}

// TestHTTP_Hanging: a server that never answers makes the source fail with
// ErrUnavailable after Options.Timeout, long before the caller's context
// ends, so an update moves on to its next source.
func TestHTTP_Hanging(t *testing.T) {
	t.Parallel()
	srv := hangingServer(t)
	_, digest := blobContent(1)
	src := parse(t, srv.URL, source.Options{Timeout: 300 * time.Millisecond})
	calls := map[string]func() error{
		"Latest": func() error {
			_, err := src.Latest(testCtx(t), "kes")
			return err
		},
		"Manifest": func() error {
			_, err := src.Manifest(testCtx(t), "kes", "1")
			return err
		},
		"Blob": func() error {
			rc, err := src.Blob(testCtx(t), digest, 0)
			if err == nil {
				rc.Close()
			}
			return err
		},
		"Blob at offset": func() error {
			rc, err := src.Blob(testCtx(t), digest, 7)
			if err == nil {
				rc.Close()
			}
			return err
		},
	}
	for name, call := range calls {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			checkErr(t, src, call(), source.ErrUnavailable)
		})
	}
}

// TestHTTP_ListenerNeverAnswers: the same with a TCP listener that accepts
// and reads nothing (not even an HTTP server).
func TestHTTP_ListenerNeverAnswers(t *testing.T) {
	t.Parallel()
	addr := silentListener(t)
	src := parse(t, "http://"+addr+"/", source.Options{Timeout: 300 * time.Millisecond})
	_, err := src.Latest(testCtx(t), "kes")
	checkErr(t, src, err, source.ErrUnavailable)
}

// silentListener accepts TCP connections on 127.0.0.1 and holds them open
// without a byte, until the test ends.
func silentListener(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return ln.Addr().String()
}

// TestHTTP_StalledBodyHonoursContext: Options.Timeout does not bound a whole
// transfer, but the caller's context does: a body that stops arriving ends
// with an error once the context ends.
func TestHTTP_StalledBodyHonoursContext(t *testing.T) {
	t.Parallel()
	content, digest := blobContent(10_000)
	done := make(chan struct{})
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(content)))
		w.Write(content[:100])
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
		case <-done:
		}
	})
	t.Cleanup(func() { close(done) })
	src := parse(t, srv.URL, source.DefaultOptions())
	ctx, cancel := context.WithCancel(testCtx(t))
	rc, err := src.Blob(ctx, digest, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	buf := make([]byte, 100)
	if _, err := io.ReadFull(rc, buf); err != nil {
		t.Fatal(err)
	}
	cancel()
	n, err := rc.Read(buf)
	if err == nil || err == io.EOF {
		t.Fatalf("Read after the context ended = %d, %v; want an error", n, err)
	}
}

// TestHTTP_Proxy: with Options.Proxy every request goes to the proxy, as an
// absolute URI, with the proxy's credentials; the origin need not even
// resolve.
func TestHTTP_Proxy(t *testing.T) {
	t.Parallel()
	const proxyPass = "proxyS3cret"
	content, digest := blobContent(50_000)
	docs := map[string]string{
		"/updates/kes/latest.json":         `{"latest":true}`,
		"/updates/kes/latest.json.minisig": "sig",
	}
	var rec recorder
	proxy := serve(t, func(w http.ResponseWriter, r *http.Request) {
		rec.add(r)
		if !r.URL.IsAbs() || r.URL.Host != "updates.example.invalid" {
			http.Error(w, "not a proxy request", http.StatusBadRequest)
			return
		}
		if r.Header.Get("Proxy-Authorization") != "Basic "+base64.StdEncoding.EncodeToString([]byte("proxyuser:"+proxyPass)) {
			w.Header().Set("Proxy-Authenticate", `Basic realm="proxy"`)
			http.Error(w, "proxy auth", http.StatusProxyAuthRequired)
			return
		}
		if r.URL.Path == "/updates/blobs/sha256/"+digest {
			http.ServeContent(w, r, "blob", time.Time{}, bytes.NewReader(content))
			return
		}
		d, ok := docs[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, d)
	})
	proxyURL, err := url.Parse(proxy.URL)
	if err != nil {
		t.Fatal(err)
	}
	proxyURL.User = url.UserPassword("proxyuser", proxyPass)
	src := parse(t, "http://updates.example.invalid/updates", source.Options{Proxy: proxyURL})

	got, err := src.Latest(testCtx(t), "kes")
	if err != nil {
		t.Fatal(err)
	}
	checkSigned(t, got, []byte(docs["/updates/kes/latest.json"]), []byte("sig"))
	b, err := readBlob(testCtx(t), src, digest, 12_345, io.ReadAll)
	checkBytes(t, "blob through the proxy", b, content[12_345:], err)
	_, err = src.Manifest(testCtx(t), "kes", "9")
	checkErr(t, src, err, source.ErrNotFound)

	var uris []string
	for _, r := range rec.all() {
		uris = append(uris, r.RequestURI)
	}
	want := []string{
		"http://updates.example.invalid/updates/kes/latest.json",
		"http://updates.example.invalid/updates/kes/latest.json.minisig",
		"http://updates.example.invalid/updates/blobs/sha256/" + digest,
		"http://updates.example.invalid/updates/kes/9/manifest.json",
	}
	if strings.Join(uris, " ") != strings.Join(want, " ") {
		t.Errorf("the proxy saw request URIs\n\t%s\nwant\n\t%s", strings.Join(uris, "\n\t"), strings.Join(want, "\n\t"))
	}

	t.Run("WrongCredentials", func(t *testing.T) {
		t.Parallel()
		bad := *proxyURL
		bad.User = url.UserPassword("proxyuser", "wrong"+proxyPass)
		src := parse(t, "http://updates.example.invalid/updates/", source.Options{Proxy: &bad})
		_, err := src.Latest(testCtx(t), "kes")
		checkErr(t, src, err, source.ErrUnavailable)
		if strings.Contains(err.Error(), proxyPass) {
			t.Errorf("error %q shows the proxy password", err)
		}
	})

	t.Run("ProxyDown", func(t *testing.T) {
		t.Parallel()
		down, err := url.Parse("http://proxyuser:" + proxyPass + "@" + closedAddr(t))
		if err != nil {
			t.Fatal(err)
		}
		src := parse(t, "http://updates.example.invalid/updates/", source.Options{Proxy: down, Timeout: 2 * time.Second})
		_, err = src.Latest(testCtx(t), "kes")
		checkErr(t, src, err, source.ErrUnavailable)
		if strings.Contains(err.Error(), proxyPass) {
			t.Errorf("error %q shows the proxy password", err)
		}
	})
}

// closedAddr returns a 127.0.0.1 address where nothing listens.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// TestHTTP_Credentials: a repository URL's user and password reach the
// server as Basic authentication and appear in no name nor error.
func TestHTTP_Credentials(t *testing.T) {
	t.Parallel()
	const pass = "repoS3cret"
	var rec recorder
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		rec.add(r)
		switch {
		case strings.HasSuffix(r.URL.Path, "/latest.json"):
			io.WriteString(w, "{}")
		case strings.HasSuffix(r.URL.Path, "/manifest.json"):
			http.Error(w, "boom", http.StatusInternalServerError)
		default:
			http.NotFound(w, r)
		}
	})
	u, _ := url.Parse(srv.URL)
	u.User = url.UserPassword("vendor", pass)
	u.Path = "/kes-repo/"
	src := parse(t, u.String(), source.DefaultOptions())
	if strings.Contains(src.String(), pass) {
		t.Errorf("String() = %q shows the password", src)
	}
	ctx := testCtx(t)
	if _, err := src.Latest(ctx, "kes"); err != nil {
		t.Fatal(err)
	}
	for _, r := range rec.all() {
		user, pw, ok := r.BasicAuth()
		if !ok || user != "vendor" || pw != pass {
			t.Errorf("request %s: Basic auth %q %q %v, want the URL's credentials", r.URL.Path, user, pw, ok)
		}
	}
	_, err := src.Manifest(ctx, "kes", "1")
	checkErr(t, src, err, source.ErrUnavailable)
	_, blobErr := src.Blob(ctx, missingDigest, 3)
	checkErr(t, src, blobErr, source.ErrNotFound)

	down := "http://vendor:" + pass + "@" + closedAddr(t) + "/kes-repo/"
	dsrc := parse(t, down, source.Options{Timeout: 2 * time.Second})
	_, downErr := dsrc.Latest(ctx, "kes")
	checkErr(t, dsrc, downErr, source.ErrUnavailable)
	for _, e := range []error{err, blobErr, downErr} {
		if e != nil && strings.Contains(e.Error(), pass) {
			t.Errorf("error %q shows the password", e)
		}
	}
}

// TestHTTP_Request checks what the source sends: the User-Agent, paths
// under the root URL (query and fragment dropped), no Accept-Encoding.
func TestHTTP_Request(t *testing.T) {
	t.Parallel()
	var rec recorder
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		rec.add(r)
		io.WriteString(w, "{}")
	})
	ctx := testCtx(t)
	def := parse(t, srv.URL+"/vendor/updates?token=1#frag", source.Options{})
	if _, err := def.Latest(ctx, "kes"); err != nil {
		t.Fatal(err)
	}
	custom := parse(t, srv.URL+"/", source.Options{UserAgent: "kes-updater/12"})
	if _, err := custom.Manifest(ctx, "kes", "12.1"); err != nil {
		t.Fatal(err)
	}
	reqs := rec.all()
	if len(reqs) != 4 {
		t.Fatalf("server saw %d requests, want 4", len(reqs))
	}
	wantURI := []string{"/vendor/updates/kes/latest.json", "/vendor/updates/kes/latest.json.minisig", "/kes/12.1/manifest.json", "/kes/12.1/manifest.json.minisig"}
	wantUA := []string{"dpcache", "dpcache", "kes-updater/12", "kes-updater/12"}
	for i, r := range reqs {
		if r.RequestURI != wantURI[i] {
			t.Errorf("request %d: URI %q, want %q", i, r.RequestURI, wantURI[i])
		}
		if r.UserAgent() != wantUA[i] {
			t.Errorf("request %d: User-Agent %q, want %q", i, r.UserAgent(), wantUA[i])
		}
		if ae := r.Header.Get("Accept-Encoding"); ae != "" {
			t.Errorf("request %d: Accept-Encoding %q: blobs must come verbatim", i, ae)
		}
	}
}

// TestHTTP_NoTransparentDecompression: a server that labels a blob
// Content-Encoding: gzip still gets its bytes relayed as they are, since
// they are what the digest covers.
func TestHTTP_NoTransparentDecompression(t *testing.T) {
	t.Parallel()
	// A valid gzip stream of "hello".
	gz := []byte{0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xca, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x04, 0x00, 0x00, 0xff, 0xff, 0x86, 0xa6, 0x10, 0x36, 0x05, 0x00, 0x00, 0x00}
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Encoding", "gzip")
		w.Write(gz)
	})
	src := parse(t, srv.URL, source.DefaultOptions())
	got, err := readBlob(testCtx(t), src, manifest.SHA256Hex(gz), 0, io.ReadAll)
	checkBytes(t, "gzip-labelled blob", got, gz, err)
}

// TestHTTP_UntrustedTLS: an HTTPS server with a certificate outside the
// system roots is refused (ErrUnavailable), not trusted.
func TestHTTP_UntrustedTLS(t *testing.T) {
	t.Parallel()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "{}")
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	src := parse(t, srv.URL, source.Options{Timeout: 5 * time.Second})
	_, err := src.Latest(testCtx(t), "kes")
	checkErr(t, src, err, source.ErrUnavailable)
}

// TestHTTP_CloseReleases: closing a blob reader in the middle ends the
// transfer on the server, while the caller's context is still alive.
func TestHTTP_CloseReleases(t *testing.T) {
	t.Parallel()
	content, digest := blobContent(1 << 20)
	released := make(chan struct{})
	done := make(chan struct{})
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(content)))
		w.Write(content[:1000])
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
			close(released)
		case <-done:
		}
	})
	t.Cleanup(func() { close(done) })
	src := parse(t, srv.URL, source.DefaultOptions())
	rc, err := src.Blob(testCtx(t), digest, 0)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 500)
	if _, err := io.ReadFull(rc, buf); err != nil {
		t.Fatal(err)
	}
	if err := rc.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case <-released:
	case <-time.After(20 * time.Second):
		t.Fatal("the server's request was still open 20 s after Close")
	}
}

// TestHTTP_RedirectDowngrade: an https source that redirects to plain http
// is refused (nothing is asked over http), naming the refused target;
// https to https is followed.
func TestHTTP_RedirectDowngrade(t *testing.T) {
	t.Parallel()
	var plainHits atomic.Int64
	plain := serve(t, func(w http.ResponseWriter, r *http.Request) {
		plainHits.Add(1)
		io.WriteString(w, "{}")
	})
	var target string
	tlsSrv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/moved/") {
			io.WriteString(w, "{}")
			return
		}
		http.Redirect(w, r, target+r.URL.Path, http.StatusFound)
	}))
	tlsSrv.Config.ErrorLog = log.New(io.Discard, "", 0)
	tlsSrv.StartTLS()
	t.Cleanup(tlsSrv.Close)
	pool := x509.NewCertPool()
	pool.AddCert(tlsSrv.Certificate())
	opts := source.Options{Timeout: 5 * time.Second, TLSConfig: &tls.Config{RootCAs: pool}}

	target = plain.URL
	src := parse(t, tlsSrv.URL, opts)
	_, err := src.Latest(testCtx(t), "kes")
	checkErr(t, src, err, source.ErrUnavailable)
	if !strings.Contains(fmt.Sprint(err), "refused a redirect from https to http") || plainHits.Load() != 0 {
		t.Errorf("https→http redirect: %v, %d requests over http; want it refused, none sent", err, plainHits.Load())
	}

	target = tlsSrv.URL + "/moved"
	if s, err := src.Latest(testCtx(t), "kes"); err != nil || string(s.Data) != "{}" {
		t.Errorf("https→https redirect: %q, %v; want it followed", s.Data, err)
	}
}
