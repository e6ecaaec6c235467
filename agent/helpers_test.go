package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dpcache/dpcache/e2e/testenv"
	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/source"
)

func TestMain(m *testing.M) { testenv.VerifyTestMain(m) }

const product = "acme-av"

// testCtx returns a context that ends with the test, bounded by a timeout.
func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// repo is a repository folder published with manifest.Publish.
type repo struct {
	dir   string
	key   manifest.PrivateKey
	trust *manifest.Trust
}

func newRepo(t testing.TB) *repo {
	t.Helper()
	key, pub, err := manifest.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	trust, err := manifest.NewTrust(pub)
	if err != nil {
		t.Fatal(err)
	}
	return &repo{dir: t.TempDir(), key: key, trust: trust}
}

// sameKeyRepo returns another repository folder signed by r's key.
func (r *repo) sameKeyRepo(t testing.TB) *repo {
	return &repo{dir: t.TempDir(), key: r.key, trust: r.trust}
}

// publish publishes files (slash path -> content) as version with serial
// (0: next).
func (r *repo) publish(t testing.TB, version string, serial uint64, files map[string]string) *manifest.PublishResult {
	t.Helper()
	return r.publishWith(t, manifest.PublishOptions{Version: version, Serial: serial}, files)
}

// publishWith publishes files with opts (Repo, Product and Key are r's).
func (r *repo) publishWith(t testing.TB, opts manifest.PublishOptions, files map[string]string) *manifest.PublishResult {
	t.Helper()
	src := t.TempDir()
	for p, c := range files {
		full := filepath.Join(src, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	opts.Repo, opts.Product, opts.Key = r.dir, product, r.key
	res, err := manifest.Publish(opts, src)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// writeSigned writes a document and its signature into the repository at
// rel, bypassing Publish (for documents Publish would refuse).
func (r *repo) writeSigned(t testing.TB, rel string, doc []byte) {
	t.Helper()
	sig, err := r.key.Sign(doc)
	if err != nil {
		t.Fatal(err)
	}
	full := filepath.Join(r.dir, filepath.FromSlash(rel))
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		t.Fatal(err)
	}
	for p, b := range map[string][]byte{full: doc, full + manifest.SigSuffix: sig} {
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func (r *repo) blobFile(content string) string {
	return filepath.Join(r.dir, filepath.FromSlash(manifest.BlobPath(sha(content))))
}

func sha(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// testConfig returns a Config installing product into a fresh directory.
func testConfig(t testing.TB, trust *manifest.Trust, sources ...source.Source) Config {
	cfg := DefaultConfig()
	cfg.Sources = sources
	cfg.Product = product
	cfg.Dir = t.TempDir()
	cfg.Trust = trust
	return cfg
}

// readTree returns the regular files under dir (slash path -> content);
// it fails on anything else than files and directories.
func readTree(t testing.TB, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		if !d.Type().IsRegular() {
			t.Errorf("%s: not a regular file (%v)", p, d.Type())
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		out[filepath.ToSlash(rel)] = string(b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// current returns what Dir/<product>/current holds.
func current(t testing.TB, cfg Config) map[string]string {
	t.Helper()
	return readTree(t, filepath.Join(cfg.Dir, product, currentName)+"/")
}

func assertTree(t testing.TB, got, want map[string]string) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("tree has %d files %v, want %d %v", len(got), keys(got), len(want), keys(want))
	}
	for p, w := range want {
		if g, ok := got[p]; !ok {
			t.Errorf("file %q missing", p)
		} else if g != w {
			t.Errorf("file %q = %d bytes %.20q, want %d bytes %.20q", p, len(g), g, len(w), w)
		}
	}
}

func keys(m map[string]string) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

func mustUpdate(t testing.TB, cfg Config) *Result {
	t.Helper()
	res, err := Update(testCtx(t), cfg)
	if err != nil {
		t.Fatalf("Update: %v", err)
	}
	return res
}

// countingSource wraps a Source and records blob requests and bytes.
type countingSource struct {
	source.Source
	mu       sync.Mutex
	offsets  map[string][]int64 // digest -> offsets asked
	bytes    atomic.Int64
	docCalls atomic.Int64
}

func counting(s source.Source) *countingSource {
	return &countingSource{Source: s, offsets: map[string][]int64{}}
}

func (c *countingSource) Latest(ctx context.Context, p string) (source.Signed, error) {
	c.docCalls.Add(1)
	return c.Source.Latest(ctx, p)
}

func (c *countingSource) Blob(ctx context.Context, digest string, off int64) (io.ReadCloser, error) {
	c.mu.Lock()
	c.offsets[digest] = append(c.offsets[digest], off)
	c.mu.Unlock()
	rc, err := c.Source.Blob(ctx, digest, off)
	if err != nil {
		return nil, err
	}
	return &countingReader{ReadCloser: rc, n: &c.bytes}, nil
}

func (c *countingSource) blobRequests() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, o := range c.offsets {
		n += len(o)
	}
	return n
}

func (c *countingSource) offsetsOf(digest string) []int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]int64(nil), c.offsets[digest]...)
}

type countingReader struct {
	io.ReadCloser
	n *atomic.Int64
}

func (r *countingReader) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	r.n.Add(int64(n))
	return n, err
}

// fault says how the test HTTP server mangles a blob response.
type fault struct {
	corrupt  bool  // flip a byte of the body
	cutAfter int64 // > 0: abort the connection after this many body bytes
	status   int   // != 0: answer with this status instead
}

// httpRepo serves a repository folder over HTTP (Range supported), with
// per-request faults on blobs, and counts the blob body bytes it sends.
type httpRepo struct {
	srv   *httptest.Server
	src   source.Source
	sent  atomic.Int64
	mu    sync.Mutex
	fault func(req int, r *http.Request) fault // req counts blob requests from 0
	reqs  int
	hdrs  []string // Range headers of blob requests
}

func serveRepo(t testing.TB, dir string, faultFn func(req int, r *http.Request) fault) *httpRepo {
	t.Helper()
	h := &httpRepo{fault: faultFn}
	files := http.FileServer(http.Dir(dir))
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.Path, "/blobs/") {
			files.ServeHTTP(w, r)
			return
		}
		h.mu.Lock()
		n := h.reqs
		h.reqs++
		h.hdrs = append(h.hdrs, r.Header.Get("Range"))
		fn := h.fault
		h.mu.Unlock()
		var f fault
		if fn != nil {
			f = fn(n, r)
		}
		if f.status != 0 {
			http.Error(w, http.StatusText(f.status), f.status)
			return
		}
		files.ServeHTTP(&faultWriter{ResponseWriter: w, f: f, sent: &h.sent}, r)
	}))
	u, _ := url.Parse(h.srv.URL + "/")
	src, err := source.NewHTTP(u, source.DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	h.src = src
	t.Cleanup(func() {
		src.Close()
		h.srv.CloseClientConnections()
		h.srv.Close()
	})
	return h
}

func (h *httpRepo) setFault(fn func(req int, r *http.Request) fault) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.fault = fn
}

func (h *httpRepo) ranges() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.hdrs...)
}

type faultWriter struct {
	http.ResponseWriter
	f    fault
	n    int64
	sent *atomic.Int64
}

func (w *faultWriter) Write(p []byte) (int, error) {
	if w.f.cutAfter > 0 && w.n+int64(len(p)) > w.f.cutAfter {
		p = p[:w.f.cutAfter-w.n]
		if len(p) > 0 {
			w.ResponseWriter.Write(p)
			w.sent.Add(int64(len(p)))
		}
		if fl, ok := w.ResponseWriter.(http.Flusher); ok {
			fl.Flush()
		}
		panic(http.ErrAbortHandler) // drops the connection mid-body
	}
	if w.f.corrupt && w.n == 0 && len(p) > 0 {
		q := bytes.Clone(p)
		q[0] ^= 0xff
		p = q
	}
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	w.sent.Add(int64(n))
	return n, err
}

// closedSource is an http source on a port nothing listens on.
func closedSource(t testing.TB) source.Source {
	srv := httptest.NewServer(http.NotFoundHandler())
	u, _ := url.Parse(srv.URL + "/")
	srv.Close()
	src, err := source.NewHTTP(u, source.DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	return src
}

// reportingSource is a Source that records status reports.
type reportingSource struct {
	source.Source
	mu      sync.Mutex
	reports []source.Status
	err     error
}

func (r *reportingSource) ReportStatus(ctx context.Context, st source.Status) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reports = append(r.reports, st)
	return r.err
}

func (r *reportingSource) last(t testing.TB) source.Status {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.reports) == 0 {
		t.Fatal("no status report")
	}
	return r.reports[len(r.reports)-1]
}

var errCrash = errors.New("simulated crash")
