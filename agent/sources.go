package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/source"
	"github.com/dpcache/dpcache/source/failover"
)

// newChain returns the failover engine over srcs for one run: documents
// and blobs of a run share health, so a source that failed for latest.json
// is tried last for the blobs too. check verifies each document (see
// failover.Options.Verify).
func newChain(srcs []source.Source, health *failover.Health, stall time.Duration, log *slog.Logger, check func(kind string, s source.Signed) error) *failover.Chain {
	return newChainHint(srcs, health, stall, log, hint, check)
}

// newChainHint is newChain with another advice function than hint (the
// mirror's: a folder, not an installation, holds the serial).
func newChainHint(srcs []source.Source, health *failover.Health, stall time.Duration, log *slog.Logger, hint func(error) string, check func(kind string, s source.Signed) error) *failover.Chain {
	opts := failover.Options{StallTimeout: stall, Health: health, Hint: hint, Logger: log}
	if check != nil {
		opts.Verify = func(kind, _, _ string, s source.Signed) error { return check(kind, s) }
	}
	return failover.New(srcs, opts)
}

// verifyLatest checks a latest.json's signature and product. A bad
// signature is worth one more request to the same source: publish replaces
// the signature before the document, so a fetch can pair an old document
// with a new signature for an instant.
func verifyLatest(trust *manifest.Trust, product string, s source.Signed) (*manifest.Latest, error) {
	l, err := trust.VerifyLatest(s.Data, s.Signature)
	if errors.Is(err, manifest.ErrBadSignature) {
		return nil, failover.Retry(err)
	}
	if err != nil {
		return nil, err
	}
	if l.Product != product {
		return nil, fmt.Errorf("%s is about product %q: %w", manifest.LatestPath(product), l.Product, ErrWrongProduct)
	}
	return l, nil
}

// verifyManifest checks a manifest's signature, that it is the one latest
// names (when given), and that it is the product and version asked for.
func verifyManifest(trust *manifest.Trust, product, version string, latest *manifest.Latest, s source.Signed) (*manifest.Manifest, error) {
	m, err := trust.VerifyManifest(s.Data, s.Signature, latest)
	if errors.Is(err, manifest.ErrBadSignature) {
		return nil, failover.Retry(err)
	}
	if err != nil {
		return nil, err
	}
	if m.Product != product || m.Version != version {
		return nil, fmt.Errorf("manifest of %s %s names %s %s: %w", product, version, m.Product, m.Version, ErrWrongProduct)
	}
	return m, nil
}

// named sets what a failover error is about, in the user's words (a file
// rather than its blob path).
func named(err error, what string) error {
	var fe *failover.Error
	if errors.As(err, &fe) {
		fe.What = what
	}
	return err
}

// productNotFound adds advice to a failover error about latest.json when
// no source has it: the product name is likely mistyped.
func productNotFound(err error) error {
	var fe *failover.Error
	if errors.As(err, &fe) && errors.Is(err, source.ErrNotFound) {
		fe.Advice = "check the product name"
	}
	return err
}
