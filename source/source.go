package source

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/dpcache/dpcache/manifest"
)

// Signed is a repository document and its minisign signature, both verbatim.
type Signed struct {
	Data      []byte
	Signature []byte
	// Source names the source that served the document (its String(),
	// without credentials), for results and logs: with a Chain, the member
	// that served it.
	Source string
	// Stale: no source offered a current document, and this is the
	// newest of the stale ones (see failover.Stale).
	Stale bool
}

// Source is one place updates come from. Implementations are safe for
// concurrent use.
type Source interface {
	// Latest returns <product>/latest.json and its signature.
	Latest(ctx context.Context, product string) (Signed, error)
	// Manifest returns <product>/<version>/manifest.json and its signature.
	Manifest(ctx context.Context, product, version string) (Signed, error)
	// Blob opens the blob named by its hex SHA-256, positioned at offset.
	// The reader yields the bytes from offset to the blob's end; reading
	// past what the source has returns an error, never silent truncation
	// (a short body is io.ErrUnexpectedEOF). Closing the reader releases
	// the transfer.
	Blob(ctx context.Context, digest string, offset int64) (io.ReadCloser, error)
	// String names the source for logs and errors, without credentials.
	String() string
	// Close releases connections the source holds.
	Close() error
}

// Reporter is implemented by sources that accept endpoint status reports
// (a distribution point).
type Reporter interface {
	ReportStatus(ctx context.Context, st Status) error
}

// Status is what an endpoint reports after an update run.
type Status struct {
	ID       string    // stable endpoint identifier
	Hostname string    // the endpoint's host name
	Site     string    // the endpoint's site
	Product  string    // product updated
	Version  string    // version installed after the run
	Serial   uint64    // serial of Version
	Result   string    // "updated", "up-to-date", "stale", "held", "failed" or "rolled-back"
	Error    string    // the error of a failed run
	Reported time.Time // when the run ended
}

// The edges where a product, version or digest enters a Source: each is
// checked by package manifest, which owns the repository's names, digests
// and layout, before it becomes a path, a URL or a request. The errors wrap
// both ErrInvalid and manifest.ErrInvalid.

// LatestPath checks product and returns manifest.LatestPath(product).
func LatestPath(product string) (string, error) {
	if err := manifest.ValidName(product); err != nil {
		return "", fmt.Errorf("product %w: %w", err, ErrInvalid)
	}
	return manifest.LatestPath(product), nil
}

// ManifestPath checks product and version and returns
// manifest.ManifestPath(product, version).
func ManifestPath(product, version string) (string, error) {
	if err := manifest.ValidName(product); err != nil {
		return "", fmt.Errorf("product %w: %w", err, ErrInvalid)
	}
	if err := manifest.ValidName(version); err != nil {
		return "", fmt.Errorf("version %w: %w", err, ErrInvalid)
	}
	return manifest.ManifestPath(product, version), nil
}

// BlobPath checks digest and returns manifest.BlobPath(digest).
func BlobPath(digest string) (string, error) {
	d, err := manifest.ParseDigest(digest)
	if err != nil {
		return "", fmt.Errorf("blob %w: %w", err, ErrInvalid)
	}
	return manifest.BlobPath(d.String()), nil
}
