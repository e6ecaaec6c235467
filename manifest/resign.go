package manifest

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"time"
)

// ResignOptions says which product Resign publishes again.
type ResignOptions struct {
	// Repo is the repository root folder; the product must be published
	// there.
	Repo string
	// Product names the product (ValidName).
	Product string
	// Key signs the new latest.json. Only the secret key is needed: the
	// manifest keeps the signature it was published with.
	Key PrivateKey
	// Now gives the time the new expiry counts from (rounded down to the
	// second, UTC); nil means time.Now.
	Now func() time.Time
	// Expires is how long from now the version counts as current again
	// (latest.json's "expires"); 0 means it never expires. `dpcache
	// resign` defaults to DefaultExpiry.
	Expires time.Duration
}

// Validate checks that opts names a repository, a valid product name and a
// usable key.
func (o ResignOptions) Validate() error {
	if o.Repo == "" {
		return fmt.Errorf("resign: no repository folder given: %w", ErrInvalid)
	}
	if o.Expires < 0 {
		return fmt.Errorf("resign: negative expiry %v: %w", o.Expires, ErrInvalid)
	}
	if err := ValidName(o.Product); err != nil {
		return fmt.Errorf("resign: product: %w", err)
	}
	if !o.Key.ok {
		return fmt.Errorf("resign: no signing key: %w", ErrBadKey)
	}
	return nil
}

// ResignResult reports what Resign did.
type ResignResult struct {
	// Previous is the latest.json that was replaced, Latest the one
	// written.
	Previous, Latest *Latest
}

// Resign publishes the product's current version again under the next
// serial with a new expiry: it writes a new latest.json (and its
// signature) and nothing else. No blob moves, and the version's
// manifest.json stays byte for byte as published.
//
// The manifest never changes once published: HTTP caches, DPs (which keep
// manifests by their path <product>/<version>/manifest.json) and mirrors
// keep it by path, so a changed manifest under the same path would leave
// readers with two different documents of one name. So the new latest.json
// keeps product, version, manifest_sha256 (the signed pin on the unchanged
// manifest) and published, and gets serial = the previous latest's serial
// + 1 and expires = now + opts.Expires (none when 0). Published stays the
// version's publication time: DPs measure how far an endpoint is behind by
// the publication times of versions, and an endpoint holding this very
// version is not behind. Freshness is what expires says.
//
// Resign reads the existing latest.json without verifying its signature
// (the repository is the publisher's own, as for Publish; the signing key
// may have been rotated since), and refuses a product with no latest.json
// (ErrNotPublished), a latest.json that does not parse or names another
// product, and one whose manifest is missing, unsigned, or does not have
// the SHA-256, product and version latest.json names (ErrMismatch). Every
// reader checks the signatures anyway.
//
// The signature is written before latest.json, each atomically, as
// Publish does: a reader that fetches latest.json first never pairs the
// new document with the old signature. Resign is not safe for concurrent
// use with Publish or Resign on the same product of one repository.
func Resign(opts ResignOptions) (*ResignResult, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	where := fmt.Sprintf("resign %s in %s", opts.Product, opts.Repo)
	fsPath := func(p string) string { return filepath.Join(opts.Repo, filepath.FromSlash(p)) }

	latestFile := fsPath(LatestPath(opts.Product))
	data, err := os.ReadFile(latestFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: no %s; publish a version first: %w", where, latestFile, ErrNotPublished)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	prev, err := ParseLatest(data)
	if err != nil {
		return nil, fmt.Errorf("%s: the existing %s is unreadable, fix it or publish a new version: %w", where, latestFile, err)
	}
	if prev.Product != opts.Product {
		return nil, fmt.Errorf("%s: the existing %s is for product %q: %w", where, latestFile, prev.Product, ErrInvalid)
	}
	if prev.Serial == math.MaxUint64 {
		return nil, fmt.Errorf("%s: serial %d cannot grow: %w", where, prev.Serial, ErrLowerSerial)
	}

	manifestFile := fsPath(ManifestPath(opts.Product, prev.Version))
	mdata, err := os.ReadFile(manifestFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %s names version %s, but %s is missing; publish a new version: %w",
			where, latestFile, prev.Version, manifestFile, ErrMismatch)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	if got := SHA256Hex(mdata); got != prev.ManifestSHA256 {
		return nil, fmt.Errorf("%s: %s has sha256 %s, %s says %s; publish a new version: %w",
			where, manifestFile, got, latestFile, prev.ManifestSHA256, ErrMismatch)
	}
	m, err := ParseManifest(mdata)
	if err != nil {
		return nil, fmt.Errorf("%s: %s: %w", where, manifestFile, err)
	}
	if m.Product != prev.Product || m.Version != prev.Version || m.Serial > prev.Serial {
		return nil, fmt.Errorf("%s: %s is %s %s serial %d, %s says %s %s serial %d: %w",
			where, manifestFile, m.Product, m.Version, m.Serial, latestFile, prev.Product, prev.Version, prev.Serial, ErrMismatch)
	}
	switch sig, err := os.ReadFile(SigPath(manifestFile)); {
	case errors.Is(err, fs.ErrNotExist) || err == nil && len(bytes.TrimSpace(sig)) == 0:
		return nil, fmt.Errorf("%s: %s has no signature; publish a new version: %w",
			where, manifestFile, ErrMissingSignature)
	case err != nil:
		return nil, fmt.Errorf("%s: %w", where, err)
	}

	l := *prev
	l.Serial = prev.Serial + 1
	l.Expires = nil
	if opts.Expires > 0 {
		exp := now().UTC().Truncate(time.Second).Add(opts.Expires)
		l.Expires = &exp
	}
	if err := l.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	ldata, err := l.Marshal()
	if err != nil {
		return nil, err
	}
	lsig, err := opts.Key.SignFile(ldata, LatestName)
	if err != nil {
		return nil, err
	}
	// Signature before document, as Publish writes them.
	if err := WriteFileAtomic(SigPath(latestFile), lsig); err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	if err := WriteFileAtomic(latestFile, ldata); err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	return &ResignResult{Previous: prev, Latest: &l}, nil
}
