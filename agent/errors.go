package agent

import (
	"errors"
	"io"

	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/source"
	"github.com/dpcache/dpcache/source/failover"
)

// Sentinel errors. Functions of this package wrap them with %w and add what
// failed, where, and what to do; match them with errors.Is.
var (
	// ErrInvalidConfig means a Config failed Validate.
	ErrInvalidConfig = errors.New("invalid agent configuration")

	// ErrNotInstalled means the product has no current version in the
	// install directory (no `current` link).
	ErrNotInstalled = errors.New("product not installed")

	// ErrBrokenInstall means the install directory is not in the shape
	// the agent leaves it in: `current` is not a symlink or pointer file
	// into .dpcache/versions, or the version it names lacks its manifest.
	ErrBrokenInstall = errors.New("install directory is damaged")

	// ErrNoPrevious means a rollback was asked for but no previous
	// version is kept on disk.
	ErrNoPrevious = errors.New("no previous version to roll back to")

	// ErrHeld means the product is held on a version after a rollback,
	// so it cannot be rolled back further: nothing older is kept.
	ErrHeld = errors.New("product is held")

	// ErrNotHeld means Unhold was asked for a product that is not held.
	ErrNotHeld = errors.New("product is not held")

	// ErrLowerSerial means a source offered a version whose serial is
	// lower than the installed one. The agent never moves to a lower
	// serial on its own (that is a rollback attack, or a stale source);
	// only Rollback goes back.
	ErrLowerSerial = errors.New("serial lower than the installed one")

	// ErrStale means a source offered a latest.json past its expiry (a
	// freeze attack, or a mirror nobody refreshes): the next source is
	// tried, and if none is current the newest expired version still
	// installs, with StatusStale.
	ErrStale = manifest.ErrExpired

	// ErrSerialConflict means a source offered a version with the same
	// serial as the installed one but different content (another
	// version name or manifest digest): one of the two was not published
	// by the vendor's normal process.
	ErrSerialConflict = errors.New("same serial, different content")

	// ErrWrongProduct means a signed document is about another product
	// than the one asked for.
	ErrWrongProduct = errors.New("document for another product")

	// ErrDigestMismatch means downloaded bytes do not match the size or
	// SHA-256 that the signed manifest gives: the source's content is
	// corrupt (or was tampered with).
	ErrDigestMismatch = errors.New("content does not match the manifest")

	// ErrUnsafePath means a manifest path would be written outside the
	// install directory, or through a symlink, and was refused.
	ErrUnsafePath = errors.New("unsafe file path")

	// ErrSourcesFailed means every source failed; the
	// *failover.Error that wraps it lists each source and why.
	ErrSourcesFailed = failover.ErrAllFailed

	// ErrBadEndpointID means the endpoint id kept in the install root
	// (or given) is empty, too long, or has a '/' or a control
	// character.
	ErrBadEndpointID = errors.New("invalid endpoint id")

	// ErrBusy means another update or rollback of the same product in the
	// same directory is running (its lock file is held).
	ErrBusy = errors.New("another update is running")
)

// hint says what a failure means for the user, or "" when the error speaks
// for itself.
func hint(err error) string {
	switch {
	case errors.Is(err, ErrDigestMismatch):
		return "source content is corrupt"
	case errors.Is(err, manifest.ErrUntrustedKey):
		return "signed by a key that --trust does not list; check the trusted keys"
	case errors.Is(err, manifest.ErrMissingSignature):
		return "the source has no signature for it; the repository is incomplete"
	case errors.Is(err, manifest.ErrBadSignature):
		return "signature does not match; the document was altered or is being republished"
	case errors.Is(err, manifest.ErrMismatch):
		return "the manifest is not the one latest.json names; the source is inconsistent"
	case errors.Is(err, ErrStale):
		return "the source offers an expired version; check that it is still being updated"
	case errors.Is(err, ErrLowerSerial):
		return "the source is stale or replaying an old version; use an up-to-date source, or `dpcache rollback` to go back on purpose"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "the transfer was cut; what arrived is kept and the next attempt resumes"
	case errors.Is(err, source.ErrNotFound):
		return "the source does not have it"
	case errors.Is(err, source.ErrRefused):
		return "check the client certificate (--cert, --key): its CA and its role"
	case errors.Is(err, source.ErrUnavailable):
		return "check the network and the source address"
	}
	return ""
}

// localError marks a failure of the local disk (write, sync, rename): it is
// not the source's fault, so the agent stops instead of trying the next
// source.
type localError struct{ err error }

func (e *localError) Error() string { return e.err.Error() }
func (e *localError) Unwrap() error { return e.err }
