// Package nodeerr holds the distribution point's sentinel errors, so that
// the packages under node/internal wrap the same values package node exports
// (node.ErrNotFound is nodeerr.ErrNotFound), and the gRPC and HTTP edges
// turn them into status codes with errors.Is.
package nodeerr

import (
	"errors"
	"fmt"
	"strings"

	"github.com/dpcache/dpcache/source"
)

// Sentinel errors; package node documents them.
var (
	ErrNotFound    = errors.New("not found")
	ErrInvalid     = errors.New("invalid request")
	ErrDataLoss    = errors.New("content failed verification")
	ErrUnavailable = errors.New("no source could serve")
)

// FromSources summarises why every source failed: ErrNotFound when every
// source said so, ErrUnavailable otherwise.
func FromSources(what string, errs []string) error {
	allNotFound := len(errs) > 0
	for _, e := range errs {
		if !strings.Contains(e, source.ErrNotFound.Error()) {
			allNotFound = false
		}
	}
	sentinel := ErrUnavailable
	if allNotFound {
		sentinel = ErrNotFound
	}
	return fmt.Errorf("%s: %w: %s", what, sentinel, strings.Join(errs, "; "))
}
