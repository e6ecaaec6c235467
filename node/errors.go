package node

import "github.com/dpcache/dpcache/node/internal/nodeerr"

// Sentinel errors, turned into gRPC status codes only in the handlers. The
// packages under node/internal wrap the same values.
var (
	// ErrNotFound: an unknown product, version or blob.
	ErrNotFound = nodeerr.ErrNotFound
	// ErrInvalid: a malformed request.
	ErrInvalid = nodeerr.ErrInvalid
	// ErrDataLoss: content that failed verification.
	ErrDataLoss = nodeerr.ErrDataLoss
	// ErrUnavailable: no source could serve.
	ErrUnavailable = nodeerr.ErrUnavailable
)
