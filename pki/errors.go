package pki

import "errors"

// Sentinel errors, wrapped with %w and the file or value concerned; match
// them with errors.Is.
var (
	// ErrExists means InitCA would overwrite a CA key.
	ErrExists = errors.New("already exists")
	// ErrBadRole means a role is not one of dp, endpoint or admin.
	ErrBadRole = errors.New("unknown role")
	// ErrBadName means a certificate name or host is empty or malformed.
	ErrBadName = errors.New("bad name")
	// ErrBadFile means a certificate, key or CA file cannot be read or
	// holds no usable PEM data.
	ErrBadFile = errors.New("unusable file")
)
