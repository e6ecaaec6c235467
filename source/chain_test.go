package source_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dpcache/dpcache/e2e/testenv"
	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/source"
	"github.com/dpcache/dpcache/source/failover"
)

// logRecorder is a slog.Handler that keeps every record, with its
// attributes as strings, and also writes it to the test log.
type logRecorder struct {
	t     testing.TB
	mu    *sync.Mutex
	recs  *[]logRecord
	attrs []slog.Attr
}

type logRecord struct {
	Level slog.Level
	Msg   string
	Attrs map[string]string
}

func newLogRecorder(t testing.TB) (*slog.Logger, *logRecorder) {
	h := &logRecorder{t: t, mu: &sync.Mutex{}, recs: &[]logRecord{}}
	return slog.New(h), h
}

func (h *logRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (h *logRecorder) Handle(_ context.Context, r slog.Record) error {
	rec := logRecord{Level: r.Level, Msg: r.Message, Attrs: map[string]string{}}
	for _, a := range h.attrs {
		rec.Attrs[a.Key] = a.Value.String()
	}
	r.Attrs(func(a slog.Attr) bool {
		rec.Attrs[a.Key] = a.Value.String()
		return true
	})
	h.mu.Lock()
	*h.recs = append(*h.recs, rec)
	h.mu.Unlock()
	h.t.Logf("log %s %q %v", r.Level, r.Message, rec.Attrs)
	return nil
}

func (h *logRecorder) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append(append([]slog.Attr(nil), h.attrs...), as...)
	return &c
}

func (h *logRecorder) WithGroup(string) slog.Handler { return h }

// find returns the records at level with message msg.
func (h *logRecorder) find(level slog.Level, msg string) []logRecord {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []logRecord
	for _, r := range *h.recs {
		if r.Level == level && r.Msg == msg {
			out = append(out, r)
		}
	}
	return out
}

// reset forgets the records so far.
func (h *logRecorder) reset() {
	h.mu.Lock()
	*h.recs = nil
	h.mu.Unlock()
}

// scripted is an HTTP repository server whose misbehaviour a test sets:
// it serves documents from a folder and one blob with Range support, and
// counts what it sends.
type scripted struct {
	root    string // repository folder for documents
	content []byte
	digest  string

	mu           sync.Mutex
	requests     int
	blobRequests int
	sent         int64 // blob body bytes written
	down         bool  // every request gets 503
	downAfter    int   // >0: blob requests after this many get 503
	cutAfter     int64 // >0: a blob response closes the connection after this many body bytes
	cutTimes     int   // how many responses are cut; <0 all
	corruptBelow int64 // blob bytes below this offset are altered
	stallAfter   int64 // >0: a blob response stops sending (and holds the connection) after this many bytes
	ranges       []string
}

func (s *scripted) set(f func(s *scripted)) {
	s.mu.Lock()
	f(s)
	s.mu.Unlock()
}

func (s *scripted) stats() (requests, blobRequests int, sent int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests, s.blobRequests, s.sent
}

func (s *scripted) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.requests++
	down := s.down
	s.mu.Unlock()
	if down {
		http.Error(w, "down for the test", http.StatusServiceUnavailable)
		return
	}
	if r.URL.Path != "/"+manifest.BlobPath(s.digest) {
		http.ServeFile(w, r, s.root+r.URL.Path)
		return
	}
	s.mu.Lock()
	s.blobRequests++
	s.ranges = append(s.ranges, r.Header.Get("Range"))
	if s.downAfter > 0 && s.blobRequests > s.downAfter {
		s.mu.Unlock()
		http.Error(w, "down for the test", http.StatusServiceUnavailable)
		return
	}
	start := int64(0)
	if v, ok := strings.CutPrefix(r.Header.Get("Range"), "bytes="); ok {
		start, _ = strconv.ParseInt(strings.TrimSuffix(v, "-"), 10, 64)
	}
	body := append([]byte(nil), s.content[start:]...)
	for i := range body {
		if start+int64(i) < s.corruptBelow {
			body[i] ^= 0x5a
		}
	}
	n, cut, stall := int64(len(body)), false, false
	if s.cutAfter > 0 && s.cutTimes != 0 && s.cutAfter < n {
		n, cut = s.cutAfter, true
		s.cutTimes--
	}
	if s.stallAfter > 0 && s.stallAfter < n {
		n, stall = s.stallAfter, true
	}
	s.sent += n
	s.mu.Unlock()

	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	if start > 0 {
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, len(s.content)-1, len(s.content)))
		w.WriteHeader(http.StatusPartialContent)
	}
	w.Write(body[:n])
	w.(http.Flusher).Flush()
	switch {
	case cut:
		if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
			conn.Close()
		}
	case stall:
		<-r.Context().Done()
	}
}

// newScripted starts a scripted server for r's big blob.
func newScripted(t *testing.T, r *repo) (*scripted, string) {
	t.Helper()
	d, content := r.big()
	s := &scripted{root: r.root, content: content, digest: d}
	srv := serve(t, s.ServeHTTP)
	return s, srv.URL + "/"
}

// chainOf parses urls into a Chain with opts, closed at cleanup.
func chainOf(t *testing.T, opts failover.Options, srcOpts source.Options, urls ...string) *failover.Chain {
	t.Helper()
	var srcs []source.Source
	for _, u := range urls {
		s, err := source.Parse(u, srcOpts)
		if err != nil {
			t.Fatal(err)
		}
		srcs = append(srcs, s)
	}
	c := failover.New(srcs, opts)
	t.Cleanup(func() { c.Close() })
	return c
}

// verifier checks documents with trust, as an agent or a DP does.
func verifier(trust *manifest.Trust) func(kind, product, version string, s source.Signed) error {
	return func(kind, product, version string, s source.Signed) error {
		return trust.Verify(s.Data, s.Signature)
	}
}

// readChainBlob reads a blob from the chain from 0 and returns the bytes,
// the error, and the source the reader named at the end.
func readChainBlob(t *testing.T, c *failover.Chain, digest string) ([]byte, string, error) {
	t.Helper()
	rc, err := c.Blob(testCtx(t), digest, 0)
	if err != nil {
		return nil, "", err
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	return b, rc.(interface{ Source() string }).Source(), err
}

// checkSkipped checks that the log says, at Warn, that src was skipped for
// a reason containing why, and at Info that served served.
func checkSkipped(t *testing.T, logs *logRecorder, src, why, served string) {
	t.Helper()
	found := false
	for _, r := range logs.find(slog.LevelWarn, "update source skipped") {
		if r.Attrs["source"] == src && strings.Contains(r.Attrs["error"], why) {
			found = true
		}
	}
	if !found {
		t.Errorf("no Warn log that %s was skipped because of %q", src, why)
	}
	found = false
	for _, r := range logs.find(slog.LevelInfo, "update source served") {
		if r.Attrs["source"] == served {
			found = true
		}
	}
	if !found {
		t.Errorf("no Info log that %s served", served)
	}
}

// TestChain_DeadFirstSource: the first source's port is closed; the second
// serves documents and blobs, the results name it, and the log says why
// the first was skipped.
func TestChain_DeadFirstSource(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	logger, logs := newLogRecorder(t)
	dead := "http://" + closedAddr(t) + "/"
	c := chainOf(t, failover.Options{Verify: verifier(r.trust), Logger: logger}, source.Options{}, dead, r.root)
	good := c.Sources()[1].String()
	ctx := testCtx(t)
	l, err := c.Latest(ctx, r.product)
	if err != nil {
		t.Fatal(err)
	}
	if l.Source != good {
		t.Errorf("Latest served by %q, want %q", l.Source, good)
	}
	checkSkipped(t, logs, dead, "connection refused", good)
	m, err := c.Manifest(ctx, r.product, r.version)
	if err != nil || m.Source != good {
		t.Errorf("Manifest: %v, served by %q", err, m.Source)
	}
	d, content := r.big()
	got, from, err := readChainBlob(t, c, d)
	checkBytes(t, "blob", got, content, err)
	if from != good {
		t.Errorf("blob served by %q, want %q", from, good)
	}
}

// TestChain_HangingFirstSource: the first source accepts connections and
// never answers; the per-source timeout moves on to the next.
func TestChain_HangingFirstSource(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	logger, logs := newLogRecorder(t)
	hang := "http://" + silentListener(t) + "/"
	// The source's own timeout is long: the chain's must fire first.
	c := chainOf(t, failover.Options{ConnectTimeout: 300 * time.Millisecond, Verify: verifier(r.trust), Logger: logger},
		source.Options{Timeout: time.Minute}, hang, r.root)
	good := c.Sources()[1].String()
	l, err := c.Latest(testCtx(t), r.product)
	if err != nil {
		t.Fatal(err)
	}
	if l.Source != good {
		t.Errorf("Latest served by %q, want %q", l.Source, good)
	}
	checkSkipped(t, logs, hang, "no answer within 300ms", good)

	// A blob: the hanging source is in backoff now, so it comes last;
	// ask it alone through a fresh chain.
	logger2, logs2 := newLogRecorder(t)
	c2 := chainOf(t, failover.Options{ConnectTimeout: 300 * time.Millisecond, Logger: logger2},
		source.Options{Timeout: time.Minute}, hang, r.root)
	d, content := r.big()
	got, from, err := readChainBlob(t, c2, d)
	checkBytes(t, "blob", got, content, err)
	if from != good {
		t.Errorf("blob served by %q, want %q", from, good)
	}
	checkSkipped(t, logs2, hang, "no answer within 300ms", good)
}

// TestChain_StalledTransfer: a source that stops sending mid-blob (and
// keeps the connection open) is left after StallTimeout of silence, at
// once (a silent source is not asked again for this blob); the blob
// completes from the next source at the offset reached.
func TestChain_StalledTransfer(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	s, stallURL := newScripted(t, r)
	s.set(func(s *scripted) { s.stallAfter = 200_000 })
	ngx := testenv.StartNginx(t, r.root, testenv.NginxOptions{})
	logger, logs := newLogRecorder(t)
	c := chainOf(t, failover.Options{StallTimeout: 300 * time.Millisecond, Logger: logger}, source.Options{}, stallURL, ngx.URL)
	d, content := r.big()
	got, from, err := readChainBlob(t, c, d)
	checkBytes(t, "blob", got, content, err)
	if from != ngx.URL {
		t.Errorf("blob finished by %q, want %q", from, ngx.URL)
	}
	// Stalled at 200000, then nginx from 200000.
	_, _, sent := s.stats()
	testenv.WaitFor(t, 10*time.Second, "nginx's log of the resumed request", func() bool { return ngx.CountRequests(t, manifest.BlobPath(d)) == 1 })
	e := ngx.Requests(t)[0]
	if e.Range != "bytes=200000-" || sent != 200_000 || e.Bytes != int64(len(content))-200_000 {
		t.Errorf("stalling source sent %d bytes, nginx got Range %q and sent %d; want 200000, bytes=200000- and the rest", sent, e.Range, e.Bytes)
	}
	checkSkipped(t, logs, stallURL, "no data for 300ms", ngx.URL)
}

// TestChain_CorruptBlobFirst: the first source serves wrong bytes; the
// read ends with ErrDataLoss naming it, never io.EOF, and the next request
// from 0 comes, verified, from the second source.
func TestChain_CorruptBlobFirst(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	s, badURL := newScripted(t, r)
	s.set(func(s *scripted) { s.corruptBelow = 10 })
	logger, logs := newLogRecorder(t)
	c := chainOf(t, failover.Options{Logger: logger}, source.Options{}, badURL, r.root)
	good := c.Sources()[1].String()
	d, content := r.big()
	_, from, err := readChainBlob(t, c, d)
	if !errors.Is(err, source.ErrDataLoss) || !strings.Contains(fmt.Sprint(err), badURL) {
		t.Fatalf("reading a corrupt blob: %v, want ErrDataLoss naming %s", err, badURL)
	}
	if from != badURL {
		t.Errorf("corrupt blob read from %q, want %q", from, badURL)
	}
	if len(logs.find(slog.LevelWarn, "update source delivered a corrupt blob")) != 1 {
		t.Error("no Warn log of the corrupt blob")
	}
	got, from, err := readChainBlob(t, c, d)
	checkBytes(t, "blob after the corrupt one", got, content, err)
	if from != good {
		t.Errorf("second read served by %q, want %q", from, good)
	}
}

// TestChain_BadSignatureFirst: the first source's documents are signed by
// a key the chain's verifier does not trust; the second serves.
func TestChain_BadSignatureFirst(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	impostor := newRepo(t) // same product and version, another key
	logger, logs := newLogRecorder(t)
	c := chainOf(t, failover.Options{Verify: verifier(r.trust), Logger: logger}, source.Options{}, impostor.root, r.root)
	bad, good := c.Sources()[0].String(), c.Sources()[1].String()
	l, err := c.Latest(testCtx(t), r.product)
	if err != nil {
		t.Fatal(err)
	}
	if l.Source != good {
		t.Errorf("Latest served by %q, want %q", l.Source, good)
	}
	if _, err := r.trust.VerifyLatest(l.Data, l.Signature); err != nil {
		t.Errorf("the chain accepted a latest that does not verify: %v", err)
	}
	checkSkipped(t, logs, bad, "refused", good)
	m, err := c.Manifest(testCtx(t), r.product, r.version)
	if err != nil || m.Source != good {
		t.Errorf("Manifest: %v, served by %q", err, m.Source)
	}

	// With only bad sources, the error says why for each.
	only := chainOf(t, failover.Options{Verify: verifier(r.trust), Logger: logger}, source.Options{}, impostor.root)
	_, err = only.Latest(testCtx(t), r.product)
	if !errors.Is(err, source.ErrUnavailable) || !strings.Contains(fmt.Sprint(err), "refused") {
		t.Errorf("chain of one bad source: %v, want ErrUnavailable saying it was refused", err)
	}
}

// TestChain_Backoff: a source that failed is tried only after the others
// until its backoff ends, is still tried when the others fail, and is
// preferred again once its backoff has passed.
func TestChain_Backoff(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	first, firstURL := newScripted(t, r)
	second, secondURL := newScripted(t, r)
	logger, logs := newLogRecorder(t)
	c := chainOf(t, failover.Options{Backoff: failover.Backoff{Initial: 2 * time.Second, Max: 4 * time.Second}, Logger: logger},
		source.Options{}, firstURL, secondURL)
	latest := func() string {
		t.Helper()
		l, err := c.Latest(testCtx(t), r.product)
		if err != nil {
			t.Fatalf("Latest: %v", err)
		}
		return l.Source
	}

	first.set(func(s *scripted) { s.down = true })
	if got := latest(); got != secondURL {
		t.Fatalf("first source down: served by %q, want %q", got, secondURL)
	}
	if rec := logs.find(slog.LevelWarn, "update source skipped"); len(rec) != 1 || rec[0].Attrs["backoff"] == "" || rec[0].Attrs["next"] != secondURL {
		t.Errorf("skip log %+v, want one with a backoff and the next source", rec)
	}
	// Healed, but in backoff: not even asked.
	first.set(func(s *scripted) { s.down = false })
	before, _, _ := first.stats()
	if got := latest(); got != secondURL {
		t.Errorf("first source in backoff: served by %q, want %q", got, secondURL)
	}
	if after, _, _ := first.stats(); after != before {
		t.Errorf("the source in backoff was asked (%d requests) while the other worked", after-before)
	}
	// Not forgotten: when the other fails, the one in backoff is asked.
	second.set(func(s *scripted) { s.down = true })
	if got := latest(); got != firstURL {
		t.Errorf("other source down: served by %q, want the one in backoff %q", got, firstURL)
	}
	// Both fail: the error names both.
	first.set(func(s *scripted) { s.down = true })
	_, err := c.Latest(testCtx(t), r.product)
	if !errors.Is(err, source.ErrUnavailable) || !strings.Contains(fmt.Sprint(err), firstURL) || !strings.Contains(fmt.Sprint(err), secondURL) {
		t.Errorf("both down: %v, want ErrUnavailable naming both", err)
	}
	// Both heal; once their backoff passes, the configured order is back.
	first.set(func(s *scripted) { s.down = false })
	second.set(func(s *scripted) { s.down = false })
	testenv.WaitFor(t, 20*time.Second, "the first source to serve again", func() bool { return latest() == firstURL })
}

// TestChain_NotFoundKeepsOrder: a source that lacks a document is skipped
// but not put into backoff.
func TestChain_NotFoundKeepsOrder(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	logger, logs := newLogRecorder(t)
	c := chainOf(t, failover.Options{Logger: logger}, source.Options{}, t.TempDir(), r.root)
	empty := c.Sources()[0].String()
	for range 2 {
		if _, err := c.Latest(testCtx(t), r.product); err != nil {
			t.Fatal(err)
		}
	}
	rec := logs.find(slog.LevelWarn, "update source skipped")
	if len(rec) != 2 {
		t.Fatalf("%d skip logs, want 2 (the empty source asked first both times)", len(rec))
	}
	for _, r := range rec {
		if r.Attrs["source"] != empty || r.Attrs["backoff"] != "" {
			t.Errorf("skip log %v: want the empty source, without backoff", r.Attrs)
		}
	}
	_, err := c.Latest(testCtx(t), "no-such-product")
	if !errors.Is(err, source.ErrNotFound) {
		t.Errorf("a product no source has: %v, want ErrNotFound", err)
	}
}

// TestChain_ResumeSameSource: a transfer cut once continues from the same
// source at the offset reached: the source sends the blob's bytes once in
// total.
func TestChain_ResumeSameSource(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	s, cutURL := newScripted(t, r)
	s.set(func(s *scripted) { s.cutAfter, s.cutTimes = 300_000, 1 })
	ngx := testenv.StartNginx(t, r.root, testenv.NginxOptions{})
	logger, logs := newLogRecorder(t)
	c := chainOf(t, failover.Options{Logger: logger}, source.Options{}, cutURL, ngx.URL)
	d, content := r.big()
	got, from, err := readChainBlob(t, c, d)
	checkBytes(t, "blob", got, content, err)
	if from != cutURL {
		t.Errorf("finished by %q, want the same source %q", from, cutURL)
	}
	_, blobReqs, sent := s.stats()
	if blobReqs != 2 || sent != int64(len(content)) || s.ranges[1] != "bytes=300000-" {
		t.Errorf("source saw %d blob requests (ranges %q) and sent %d bytes; want 2, the second from 300000, and %d bytes in all", blobReqs, s.ranges, sent, len(content))
	}
	if n := ngx.CountRequests(t, ""); n != 0 {
		t.Errorf("nginx saw %d requests, want none", n)
	}
	if len(logs.find(slog.LevelWarn, "update source transfer broke, resuming from the same source")) != 1 {
		t.Error("no Warn log of the resumed transfer")
	}
	served := logs.find(slog.LevelInfo, "update source served")
	if len(served) != 1 || served[0].Attrs["resumes"] != "1" || served[0].Attrs["verified"] != "true" {
		t.Errorf("served log %+v, want one, with resumes=1 and verified=true", served)
	}
}

// TestChain_ResumeNextSource: a source that cuts every transfer is resumed
// while it makes progress, 3 times, then the next source (a real nginx) finishes from the offset
// reached: the two servers send the blob's size in total, within a chunk.
func TestChain_ResumeNextSource(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	s, cutURL := newScripted(t, r)
	const cut = 200_000
	s.set(func(s *scripted) { s.cutAfter, s.cutTimes = cut, -1 })
	ngx := testenv.StartNginx(t, r.root, testenv.NginxOptions{})
	logger, logs := newLogRecorder(t)
	c := chainOf(t, failover.Options{Logger: logger}, source.Options{}, cutURL, ngx.URL)
	d, content := r.big()
	got, from, err := readChainBlob(t, c, d)
	checkBytes(t, "blob", got, content, err)
	if from != ngx.URL {
		t.Errorf("finished by %q, want %q", from, ngx.URL)
	}
	testenv.WaitFor(t, 10*time.Second, "nginx's log of the blob", func() bool { return ngx.CountRequests(t, manifest.BlobPath(d)) == 1 })
	_, _, sent := s.stats()
	e := ngx.Requests(t)[0]
	total := sent + e.Bytes
	const chunk = 256 << 10
	if e.Range != fmt.Sprintf("bytes=%d-", 4*cut) || total > int64(len(content))+chunk || total < int64(len(content)) {
		t.Errorf("cutting source sent %d, nginx sent %d (Range %q): %d in all for a %d-byte blob; want nginx from %d and at most a chunk more than the blob",
			sent, e.Bytes, e.Range, total, len(content), 4*cut)
	}
	checkSkipped(t, logs, cutURL, "at byte 800000", ngx.URL)
}

// TestChain_ResumeFromFTPToHTTP: vsftpd dies in the middle of a blob; the
// chain resumes it from nginx with a Range at the byte reached.
func TestChain_ResumeFromFTPToHTTP(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	v := startFTP(t, r, testenv.VsftpdOptions{MaxRate: 512 << 10})
	ngx := testenv.StartNginx(t, r.root, testenv.NginxOptions{})
	logger, _ := newLogRecorder(t)
	c := chainOf(t, failover.Options{ConnectTimeout: 5 * time.Second, Logger: logger}, source.Options{}, v.URL, ngx.URL)
	d, content := r.big()
	rc, err := c.Blob(testCtx(t), d, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	head := make([]byte, 200_000)
	if _, err := io.ReadFull(rc, head); err != nil {
		t.Fatal(err)
	}
	v.Stop(t)
	rest, err := io.ReadAll(rc)
	checkBytes(t, "blob across FTP and HTTP", append(head, rest...), content, err)
	if from := rc.(interface{ Source() string }).Source(); from != ngx.URL {
		t.Errorf("finished by %q, want %q", from, ngx.URL)
	}
	testenv.WaitFor(t, 10*time.Second, "nginx's log of the blob", func() bool { return ngx.CountRequests(t, manifest.BlobPath(d)) == 1 })
	e := ngx.Requests(t)[0]
	off, ok := strings.CutPrefix(e.Range, "bytes=")
	start, _ := strconv.ParseInt(strings.TrimSuffix(off, "-"), 10, 64)
	if !ok || start < int64(len(head)) || e.Bytes != int64(len(content))-start {
		t.Errorf("nginx: Range %q, %d bytes; want a range from at least %d and only the rest", e.Range, e.Bytes, len(head))
	}
}

// TestChain_CorruptResumedTransfer: the first half of a blob comes from a
// corrupting source that then fails; the chain finishes from a good
// source, the digest does not match, the read ends in ErrDataLoss, and the
// next read from 0 comes whole and verified from the good source.
func TestChain_CorruptResumedTransfer(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	d, content := r.big()
	half := int64(len(content) / 2)
	s, badURL := newScripted(t, r)
	s.set(func(s *scripted) { s.corruptBelow, s.cutAfter, s.cutTimes, s.downAfter = half, half, -1, 1 })
	ngx := testenv.StartNginx(t, r.root, testenv.NginxOptions{})
	logger, logs := newLogRecorder(t)
	c := chainOf(t, failover.Options{Logger: logger}, source.Options{}, badURL, ngx.URL)

	_, _, err := readChainBlob(t, c, d)
	if !errors.Is(err, source.ErrDataLoss) {
		t.Fatalf("resumed corrupt transfer: %v, want ErrDataLoss", err)
	}
	if !strings.Contains(err.Error(), badURL) {
		t.Errorf("error %q does not name the corrupting source", err)
	}
	testenv.WaitFor(t, 10*time.Second, "nginx's log of the second half", func() bool { return ngx.CountRequests(t, manifest.BlobPath(d)) == 1 })
	if e := ngx.Requests(t)[0]; e.Range != fmt.Sprintf("bytes=%d-", half) {
		t.Errorf("nginx served Range %q, want the second half", e.Range)
	}

	logs.reset()
	got, from, err := readChainBlob(t, c, d)
	checkBytes(t, "blob fetched again from 0", got, content, err)
	if from != ngx.URL {
		t.Errorf("second read served by %q, want %q", from, ngx.URL)
	}
	_, blobReqs, _ := s.stats()
	if blobReqs != 2 {
		t.Errorf("the corrupting source saw %d blob requests, want 2 (the cut one and the refused resume)", blobReqs)
	}
	served := logs.find(slog.LevelDebug, "update source served")
	if len(served) != 1 || served[0].Attrs["verified"] != "true" || served[0].Attrs["source"] != ngx.URL {
		t.Errorf("served log %+v, want nginx, verified", served)
	}
}

// TestChain_ContextEnds: the caller's context ending stops the chain
// without blaming the sources.
func TestChain_ContextEnds(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	hang := "http://" + silentListener(t) + "/"
	logger, logs := newLogRecorder(t)
	c := chainOf(t, failover.Options{Logger: logger}, source.Options{}, hang, r.root)
	ctx, cancel := context.WithTimeout(testCtx(t), 200*time.Millisecond)
	defer cancel()
	_, err := c.Latest(ctx, r.product)
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, source.ErrUnavailable) {
		t.Errorf("Latest with an ended context: %v, want DeadlineExceeded and ErrUnavailable", err)
	}
	if n := len(logs.find(slog.LevelWarn, "update source skipped")); n != 0 {
		t.Errorf("%d skip logs for the caller's own deadline, want 0", n)
	}
}

// TestChain_Options: invalid options fall back to the defaults; Sources
// and String list the sources in order.
func TestChain_Options(t *testing.T) {
	t.Parallel()
	if err := (failover.Options{ConnectTimeout: -1}).Validate(); !errors.Is(err, source.ErrBadOptions) {
		t.Errorf("negative timeout: %v", err)
	}
	if err := (failover.Options{Backoff: failover.Backoff{Initial: time.Minute, Max: time.Second}}).Validate(); !errors.Is(err, source.ErrBadOptions) {
		t.Errorf("Max below Initial: %v", err)
	}
	if err := failover.DefaultOptions().Validate(); err != nil {
		t.Errorf("defaults: %v", err)
	}
	a, b := source.NewFile("/srv/a"), source.NewFile("/srv/b")
	c := failover.New([]source.Source{a, b}, failover.Options{ConnectTimeout: -1})
	defer c.Close()
	if got := c.Sources(); len(got) != 2 || got[0] != a || got[1] != b {
		t.Errorf("Sources() = %v", got)
	}
	if c.String() != "[file:///srv/a, file:///srv/b]" {
		t.Errorf("String() = %q", c.String())
	}
	empty := failover.New(nil, failover.Options{})
	if _, err := empty.Latest(testCtx(t), "kes"); !errors.Is(err, source.ErrUnavailable) {
		t.Errorf("empty chain: %v, want ErrUnavailable", err)
	}
	if !bytes.Contains([]byte(fmt.Sprint(empty)), []byte("[]")) {
		t.Errorf("empty chain String() = %q", empty)
	}
}
