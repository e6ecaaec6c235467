package manifest

import "errors"

// Sentinel errors. Functions of this package wrap them with %w and add what
// failed and where; match them with errors.Is.
var (
	// ErrInvalid means a document, name, path or digest breaks the rules of
	// the repository format (docs/design.md, "Repository layout"). The wrapping
	// error names the offending field or file.
	ErrInvalid = errors.New("invalid document")

	// ErrMissingSignature means a document came without its .minisig
	// signature (empty signature bytes).
	ErrMissingSignature = errors.New("missing signature")

	// ErrUntrustedKey means a signature was made by a key that is not in
	// the Trust set. The wrapping error names the key ID.
	ErrUntrustedKey = errors.New("signature key is not trusted")

	// ErrBadSignature means a signature is malformed or does not match the
	// document bytes (tampered or truncated document, or a signature of
	// another document).
	ErrBadSignature = errors.New("bad signature")

	// ErrMismatch means a manifest, although validly signed, is not the one
	// latest.json points at (different SHA-256, product or version, or a
	// serial above latest.json's).
	ErrMismatch = errors.New("manifest does not match latest.json")

	// ErrLowerSerial means a publish would not raise the product's serial:
	// the requested serial is lower than or equal to the current latest's.
	ErrLowerSerial = errors.New("serial not higher than the current latest")

	// ErrExpired means a latest.json is past its "expires": the source
	// offering it is stale (frozen, or a mirror nobody refreshes).
	ErrExpired = errors.New("the source is stale")

	// ErrNotPublished means a product has no latest.json in the
	// repository: Resign has nothing to publish again.
	ErrNotPublished = errors.New("product not published")

	// ErrEmpty means a publish was asked for a folder with no files.
	ErrEmpty = errors.New("nothing to publish")

	// ErrVersionExists means a publish names a version whose manifest is
	// already in the repository; published versions are immutable.
	ErrVersionExists = errors.New("version already published")

	// ErrUnsupportedFile means a publish source directory holds something
	// other than regular files and directories (a symlink, device, socket
	// or pipe).
	ErrUnsupportedFile = errors.New("unsupported file type")

	// ErrEncryptedKey means a secret key file is password-protected;
	// dpcache signs unattended and needs an unencrypted key such as the
	// one written by GenerateKeyFiles or `minisign -G -W`.
	ErrEncryptedKey = errors.New("secret key is encrypted")

	// ErrBadKey means a key file could not be parsed, or a PrivateKey is
	// the zero value.
	ErrBadKey = errors.New("bad key")

	// ErrNoTrustedKeys means a Trust was asked for with no public key.
	ErrNoTrustedKeys = errors.New("no trusted public keys")
)
