package source

import (
	"context"
	"io"
	"time"
)

// Signed is a repository document and its minisign signature, both verbatim.
type Signed struct {
	Data      []byte
	Signature []byte
	// Source names the source that served the document (its String(),
	// without credentials), for results and logs: with a Chain, the member
	// that served it.
	Source string
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
	Result   string    // "updated", "up-to-date", "failed" or "rolled-back"
	Error    string    // the error of a failed run
	Reported time.Time // when the run ended
}
