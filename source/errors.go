package source

import "errors"

// Sentinel errors. Implementations wrap them with %w and the source's name;
// match them with errors.Is.
var (
	// ErrNotFound means the source does not have the document or blob
	// (HTTP 404, a missing file, gRPC NotFound).
	ErrNotFound = errors.New("not found")
	// ErrUnavailable means the source could not be reached or failed to
	// answer (connection refused, timeout, HTTP 5xx, gRPC Unavailable).
	ErrUnavailable = errors.New("source unavailable")
	// ErrDataLoss means the source reported or delivered corrupt content
	// (gRPC DataLoss, a short body).
	ErrDataLoss = errors.New("corrupt content")
	// ErrBadURL means a source URL could not be parsed or has an
	// unsupported scheme.
	ErrBadURL = errors.New("bad source URL")
)

// ErrInvalid means a request was malformed (a bad digest, product or
// version name).
var ErrInvalid = errors.New("invalid request")
