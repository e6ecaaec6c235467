package source

import "errors"

// Sentinel errors. Implementations wrap them with %w and the source's name;
// match them with errors.Is.
var (
	// ErrNotFound means the source does not have the document or blob
	// (HTTP 404, FTP 550, a missing file, gRPC NotFound).
	ErrNotFound = errors.New("not found")
	// ErrUnavailable means the source could not be reached or failed to
	// answer (connection refused, timeout, HTTP 5xx, an FTP login refused,
	// gRPC Unavailable, an untrusted TLS certificate, a failing proxy).
	ErrUnavailable = errors.New("source unavailable")
	// ErrDataLoss means the source reported or delivered corrupt content
	// (gRPC DataLoss, a blob whose SHA-256 does not match its name, a
	// document whose signature does not verify, an offset past the end).
	ErrDataLoss = errors.New("corrupt content")
	// ErrBadURL means a source URL could not be parsed or has an
	// unsupported scheme.
	ErrBadURL = errors.New("bad source URL")
	// ErrBadOptions means Options are invalid: a malformed proxy URL or
	// NoProxy entry, or a CA file that cannot be read or holds no
	// certificate. The error names the option or the file.
	ErrBadOptions = errors.New("bad source options")
)

// ErrPartial means a source served all it holds of a blob, which is not
// all of it, by its own account (a DP asked with AvailableOnly for a blob
// it is still fetching). It is not the source's fault: a Chain moves on
// without backoff. It comes with io.ErrUnexpectedEOF.
var ErrPartial = errors.New("the source holds only part of the blob")

// ErrInvalid means a request was malformed (a bad digest, product or
// version name).
var ErrInvalid = errors.New("invalid request")

// ErrProxy means the HTTP proxy, not the origin, failed the request: it
// could not be reached, refused the credentials (HTTP 407), or refused the
// CONNECT tunnel of an https:// source. The error names the proxy (without
// its password). ErrProxy wraps ErrUnavailable, so errors.Is(err,
// ErrUnavailable) holds for it too.
var ErrProxy error = &wrappedSentinel{msg: "proxy error", parent: ErrUnavailable}

// wrappedSentinel is a sentinel that is also another sentinel.
type wrappedSentinel struct {
	msg    string
	parent error
}

func (e *wrappedSentinel) Error() string { return e.msg }
func (e *wrappedSentinel) Unwrap() error { return e.parent }

// ErrLoop means a DP refused a request that came back to it through a
// cycle of DPs listing each other as upstreams, or that went through more
// than MaxHops DPs (gRPC FailedPrecondition). It is the configuration's
// fault, not the source's: a Chain moves on to the next source without
// backoff. ErrLoop wraps ErrUnavailable, so errors.Is(err,
// ErrUnavailable) holds for it too.
var ErrLoop error = &wrappedSentinel{msg: "upstream loop", parent: ErrUnavailable}

// ErrRefused means the source refused this client: it presented no client
// certificate where one is required, one the source does not trust, or one
// whose role or name may not ask that (gRPC Unauthenticated or
// PermissionDenied). The error says which. It matches ErrUnavailable too,
// so a Chain moves on to the next source.
var ErrRefused error = refusedError{}

type refusedError struct{}

func (refusedError) Error() string        { return "refused" }
func (refusedError) Is(target error) bool { return target == ErrUnavailable }
