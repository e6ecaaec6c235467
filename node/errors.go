package node

import "errors"

// Sentinel errors, turned into gRPC status codes only in the handlers.
var (
	// ErrNotFound: an unknown product, version or blob.
	ErrNotFound = errors.New("not found")
	// ErrInvalid: a malformed request.
	ErrInvalid = errors.New("invalid request")
	// ErrDataLoss: content that failed verification.
	ErrDataLoss = errors.New("content failed verification")
	// ErrUnavailable: no source could serve.
	ErrUnavailable = errors.New("no source could serve")
)
