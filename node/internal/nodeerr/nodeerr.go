// Package nodeerr holds the distribution point's sentinel errors, so that
// the packages under node/internal wrap the same values package node exports
// (node.ErrNotFound is nodeerr.ErrNotFound), and the gRPC and HTTP edges
// turn them into status codes with errors.Is.
package nodeerr

import "errors"

// Sentinel errors; package node documents them.
var (
	ErrNotFound    = errors.New("not found")
	ErrInvalid     = errors.New("invalid request")
	ErrDataLoss    = errors.New("content failed verification")
	ErrUnavailable = errors.New("no source could serve")
)
