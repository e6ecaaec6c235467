package node

import (
	"net/http"

	"github.com/dpcache/dpcache/node/internal/fetch"
)

// chunkedFile returns the chunked file whose whole digest is digest, to be
// assembled from its chunks, when a verified manifest the DP knows names
// one and the cache does not hold the digest as a blob of its own (a
// version that lists the file unchunked): a held blob is served as is.
func (n *Node) chunkedFile(digest string) (fetch.File, bool) {
	f, ok := n.catalog.Chunked(digest)
	if !ok {
		return fetch.File{}, false
	}
	if _, err := n.cache.Stat(digest); err == nil {
		return fetch.File{}, false
	}
	return fetch.File(f), true
}

// isChunked reports whether a verified manifest the DP knows lists digest
// as a chunked file.
func (n *Node) isChunked(digest string) bool {
	_, ok := n.catalog.Chunked(digest)
	return ok
}

// serveFileHTTP serves a chunked file whole under /repo/blobs/sha256/, as
// a blob: assembled from its chunks (fetched once each, verified, never
// stored assembled) through http.ServeContent, so Range, HEAD and
// If-None-Match work as for a whole blob. Every byte served comes from a
// verified chunk, so caches may keep it; a response from the first byte is
// hashed as it goes and, if the chunks do not assemble to the digest, cut
// before its last bytes. A failure before the first byte of the body gets
// an error status; after it, the connection is aborted.
func (n *Node) serveFileHTTP(w http.ResponseWriter, r *http.Request, f fetch.File) error {
	w.Header().Set("ETag", `"`+f.SHA256+`"`)
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Cache-Control", immutableCacheControl)
	body := n.fetcher.OpenFile(r.Context(), f, false)
	defer body.Close()
	lw := &lazyHeaderWriter{ResponseWriter: w}
	http.ServeContent(lw, r, "", zeroTime, body)
	n.fetcher.AddServed(lw.n)
	err := body.Err()
	if err == nil {
		lw.commit()
		return nil
	}
	if !lw.committed {
		for _, h := range []string{"ETag", "Cache-Control", "Content-Length", "Content-Range", "Accept-Ranges", "Content-Type"} {
			w.Header().Del(h)
		}
		return err
	}
	// Headers are gone: abort the connection so the client sees a
	// truncated body, never a complete wrong file.
	n.log.Warn("HTTP chunked file stream failed", "file", f.SHA256, "err", err)
	panic(http.ErrAbortHandler)
}

// lazyHeaderWriter holds the status back until the first byte of the body
// (or commit), so that a failure before it can still be an error response.
type lazyHeaderWriter struct {
	http.ResponseWriter
	code      int
	committed bool
	n         int64 // body bytes written
}

func (l *lazyHeaderWriter) WriteHeader(code int) {
	if l.code == 0 {
		l.code = code
	}
}

func (l *lazyHeaderWriter) Write(p []byte) (int, error) {
	l.commit()
	n, err := l.ResponseWriter.Write(p)
	l.n += int64(n)
	return n, err
}

// commit sends the status held back, 200 if none.
func (l *lazyHeaderWriter) commit() {
	if l.committed {
		return
	}
	l.committed = true
	if l.code == 0 {
		l.code = http.StatusOK
	}
	l.ResponseWriter.WriteHeader(l.code)
}
