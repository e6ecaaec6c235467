package loadtest

import "errors"

// Sentinel errors. Match them with errors.Is.
var (
	// ErrInvalidConfig means a Config field is out of range or malformed;
	// the error names the field.
	ErrInvalidConfig = errors.New("invalid loadtest configuration")
	// ErrSetup means Run could not learn what to simulate: the DP did not
	// give the product's latest.json, its manifest or the manifest of
	// Config.From, or they did not verify. No endpoint was started.
	ErrSetup = errors.New("loadtest setup failed")
	// ErrDigest means a blob's bytes did not match its SHA-256 or its size
	// (Config.Verify).
	ErrDigest = errors.New("blob does not match its digest")
)
