package node

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dpcache/dpcache/manifest"
	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
	"github.com/dpcache/dpcache/source"
)

// repoPrefix is where a DP serves its content in repository layout, so any
// HTTP updater (curl, wget, a vendor's agent) can use a DP as a source.
const repoPrefix = "/repo/"

// Cache-Control of what /repo/ serves. latest.json changes whenever a newer
// version is held (or the version is re-signed): caches must ask again
// every time, and get a 304 while the ETag still matches. A version's
// manifest never changes once published (manifest.Resign writes a new
// latest.json only), and a blob's name is its digest: once whole and
// verified, both are kept for good.
const (
	latestCacheControl    = "no-cache"
	immutableCacheControl = "public, max-age=31536000, immutable"
)

// serveRepo serves GET and HEAD under /repo/: signed documents byte for
// byte, blobs with Range; each with a strong ETag, honouring If-None-Match
// and, for documents, If-Modified-Since. Misses are resolved exactly as on
// the gRPC path (upstream, one fetch per blob).
func (n *Node) serveRepo(w http.ResponseWriter, r *http.Request) {
	rel := strings.TrimPrefix(r.URL.Path, repoPrefix)
	parts := strings.Split(rel, "/")
	digest, isBlob := strings.CutPrefix(rel, manifest.BlobDir+"/")
	var err error
	switch {
	case isBlob && !strings.Contains(digest, "/"):
		err = n.serveBlobHTTP(w, r, digest)
	case len(parts) == 2 && (parts[1] == manifest.LatestName || parts[1] == manifest.LatestName+manifest.SigSuffix):
		var signed source.Signed
		if signed, err = n.catalog.Latest(r.Context(), parts[0]); err == nil {
			err = serveDoc(w, r, signed, parts[1] != manifest.LatestName, n.latestTimes.since, latestCacheControl)
		}
	case len(parts) == 3 && (parts[2] == manifest.ManifestName || parts[2] == manifest.ManifestName+manifest.SigSuffix):
		var signed source.Signed
		var m *manifest.Manifest
		if signed, m, err = n.catalog.ManifestDoc(r.Context(), parts[0], parts[1]); err == nil {
			published := func(string, string) time.Time { return m.Published }
			err = serveDoc(w, r, signed, parts[2] != manifest.ManifestName, published, immutableCacheControl)
		}
	default:
		err = fmt.Errorf("%s: %w: not a repository path", r.URL.Path, ErrNotFound)
	}
	if err != nil {
		httpError(w, err)
	}
}

// serveDoc writes a signed document or its signature, verbatim, through
// http.ServeContent: its ETag is the SHA-256 of the bytes served, its
// Last-Modified modTime(path, ETag) (none when zero), so If-None-Match and
// If-Modified-Since get 304, and Range works.
func serveDoc(w http.ResponseWriter, r *http.Request, signed source.Signed, sig bool, modTime func(path, etag string) time.Time, cacheControl string) error {
	body, ctype := signed.Data, "application/json"
	if sig {
		body, ctype = signed.Signature, "text/plain; charset=utf-8"
		if len(body) == 0 {
			return fmt.Errorf("%s: %w: no signature", r.URL.Path, ErrNotFound)
		}
	}
	etag := `"` + manifest.SHA256Hex(body) + `"`
	w.Header().Set("Content-Type", ctype)
	w.Header().Set("Cache-Control", cacheControl)
	w.Header().Set("ETag", etag)
	http.ServeContent(w, r, "", modTime(r.URL.Path, etag), bytes.NewReader(body))
	return nil
}

// changeTimes gives each latest.json (and signature) served the time this
// DP first served those bytes, as its Last-Modified: the document's own
// "published" would not do, since `dpcache resign` changes latest.json and
// keeps it. After a restart the times start again, which only makes a
// conditional request get the whole document once more. Safe for
// concurrent use.
type changeTimes struct {
	mu    sync.Mutex
	paths map[string]servedAs // guarded by mu; by URL path
}

type servedAs struct {
	etag string
	at   time.Time
}

// maxChangeTimes bounds changeTimes: a DP keeps at most 1,000 products,
// two documents each; past it the times start again.
const maxChangeTimes = 4096

// since returns when path was first served with etag, now if it just was.
// Times are whole seconds (as Last-Modified) and grow with every change of
// a path, so a client's If-Modified-Since never matches a newer document.
func (c *changeTimes) since(path, etag string) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	prev, ok := c.paths[path]
	if ok && prev.etag == etag {
		return prev.at
	}
	at := time.Now().UTC().Truncate(time.Second)
	if ok && !at.After(prev.at) {
		at = prev.at.Add(time.Second)
	}
	if c.paths == nil || len(c.paths) >= maxChangeTimes {
		c.paths = make(map[string]servedAs)
	}
	c.paths[path] = servedAs{etag, at}
	return at
}

// serveBlobHTTP serves a blob: from the cache through http.ServeContent
// (Range, If-None-Match, HEAD) when whole, else streamed as it arrives.
func (n *Node) serveBlobHTTP(w http.ResponseWriter, r *http.Request, digest string) error {
	if err := manifest.ValidDigest(digest); err != nil {
		return fmt.Errorf("%s: %w: %v", r.URL.Path, ErrInvalid, err)
	}
	if f, ok := n.chunkedFile(digest); ok {
		return n.serveFileHTTP(w, r, f)
	}
	release, err := n.pins.StartReading(r.Context(), digest) // retention never deletes a blob being served
	if err != nil {
		return err
	}
	defer release()
	whole, size, err := n.fetcher.Acquire(r.Context(), digest, false)
	if err != nil {
		return err
	}
	// A blob's name is its digest: its content never changes.
	etag := `"` + digest + `"`
	w.Header().Set("ETag", etag)
	if !whole && etagMatch(r.Header.Get("If-None-Match"), etag) {
		// The client holds these bytes already (a complete response is only
		// ever sent verified), even though this DP does not yet.
		w.Header().Set("Cache-Control", immutableCacheControl)
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	if whole {
		// Verified: caches may keep it for good.
		w.Header().Set("Cache-Control", immutableCacheControl)
		n.metrics.CacheRequest(true) // in flight: readBlob counts it below
		body := io.NewSectionReader(cacheReaderAt{n, digest}, 0, size)
		cw := &countWriter{ResponseWriter: w}
		http.ServeContent(cw, r, "", zeroTime, body)
		n.fetcher.AddServed(cw.n)
		return nil
	}
	// In flight: serve from the requested offset as bytes arrive. Only the
	// single-range forms "bytes=N-" and "bytes=N-M" are honoured here.
	from, to := int64(0), size
	status := http.StatusOK
	if rng := r.Header.Get("Range"); rng != "" {
		a, b, ok := parseRange(rng, size)
		if !ok {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes */%d", size))
			w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
			return nil
		}
		from, to, status = a, b, http.StatusPartialContent
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", a, b-1, size))
	}
	// Not verified yet: nothing may keep this response.
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Length", strconv.FormatInt(to-from, 10))
	w.WriteHeader(status)
	if r.Method == http.MethodHead || from == to {
		return nil
	}
	sink := &httpSink{w: w, left: to - from}
	err = n.fetcher.ReadBlob(r.Context(), digest, from, false, sink)
	if err == nil && sink.left == 0 {
		// The blob is whole and verified: the held-back last byte ends
		// the response.
		_, err = w.Write(sink.held)
		if err == nil {
			return nil
		}
	}
	if err == nil {
		err = fmt.Errorf("the stream ended %d bytes short", sink.left)
	}
	// Headers are gone: abort the connection so the client sees a
	// truncated body, never a silently short or unverified one.
	n.log.Warn("HTTP blob stream failed", "blob", digest, "err", err)
	panic(http.ErrAbortHandler)
}

// etagMatch reports whether an If-None-Match header value names etag, by
// weak comparison (RFC 9110 13.1.2: "*", or a list of entity tags, W/
// ignored), as http.ServeContent does for whole content.
func etagMatch(header, etag string) bool {
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimSpace(t)
		if t == "*" || strings.TrimPrefix(t, "W/") == etag {
			return true
		}
	}
	return false
}

// parseRange parses "bytes=a-" or "bytes=a-b" against size into [from, to).
func parseRange(h string, size int64) (int64, int64, bool) {
	spec, ok := strings.CutPrefix(h, "bytes=")
	if !ok || strings.Contains(spec, ",") {
		return 0, 0, false
	}
	a, b, ok := strings.Cut(spec, "-")
	if !ok || a == "" {
		return 0, 0, false
	}
	from, err := strconv.ParseInt(a, 10, 64)
	if err != nil || from < 0 || from >= size {
		return 0, 0, false
	}
	to := size
	if b != "" {
		last, err := strconv.ParseInt(b, 10, 64)
		if err != nil || last < from {
			return 0, 0, false
		}
		to = size
		if last < size-1 { // last+1 cannot overflow
			to = last + 1
		}
	}
	return from, to, true
}

// httpSink adapts readBlob's chunk stream to an HTTP body.
type httpSink struct {
	w    http.ResponseWriter
	left int64  // bytes of the range still to write
	held []byte // the range's last byte, written only once the blob is verified
}

// SendMsg writes a chunk of the range as it arrives, except the range's
// last byte, which waits for the fetch to verify the blob (a client must
// never see a complete response of unverified bytes); the bytes past the
// range are read on, unused, until the fetch ends.
func (s *httpSink) SendMsg(m any) error {
	c := m.(*pb.BlobChunk)
	if c.Data == nil {
		return nil
	}
	defer c.Data.Free()
	b := c.Data.ReadOnlyData()
	if int64(len(b)) > s.left {
		b = b[:s.left]
	}
	if len(b) == 0 {
		return nil
	}
	if int64(len(b)) == s.left {
		s.held = append(s.held[:0], b[len(b)-1])
		b = b[:len(b)-1]
	}
	if _, err := s.w.Write(b); err != nil {
		return err
	}
	s.left -= int64(len(b) + len(s.held))
	return nil
}

// cacheReaderAt reads a whole blob from the cache.
type cacheReaderAt struct {
	n      *Node
	digest string
}

func (c cacheReaderAt) ReadAt(p []byte, off int64) (int, error) {
	return c.n.cache.ReadAt(c.digest, p, off)
}

type countWriter struct {
	http.ResponseWriter
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n += int64(n)
	return n, err
}

// httpError writes err with the HTTP status matching its gRPC code.
func httpError(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	switch status.Code(toStatus(err)) {
	case codes.NotFound:
		code = http.StatusNotFound
	case codes.InvalidArgument:
		code = http.StatusBadRequest
	case codes.DataLoss:
		code = http.StatusBadGateway
	case codes.Unavailable:
		code = http.StatusServiceUnavailable
	case codes.Canceled, codes.DeadlineExceeded:
		code = http.StatusGatewayTimeout
	}
	http.Error(w, err.Error(), code)
}

var zeroTime time.Time
