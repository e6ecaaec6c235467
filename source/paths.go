package source

import (
	"fmt"
)

// The repository layout (DESIGN.md). Kept here rather than imported from
// package manifest so that sources depend only on the layout, not on the
// documents' schema; the conformance tests check both agree.

// validName checks a product or version name: [A-Za-z0-9._-], 1 to 128
// characters, not "." or "..": it becomes a path element.
func validName(what, s string) error {
	if s == "" || len(s) > 128 || s == "." || s == ".." {
		return fmt.Errorf("source: %s %q: want 1 to 128 of [A-Za-z0-9._-], not . or ..: %w", what, s, ErrInvalid)
	}
	for _, c := range s {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("source: %s %q: character %q not allowed (want [A-Za-z0-9._-]): %w", what, s, c, ErrInvalid)
		}
	}
	return nil
}

func latestPath(product string) (string, error) {
	if err := validName("product", product); err != nil {
		return "", err
	}
	return product + "/latest.json", nil
}

func manifestPath(product, version string) (string, error) {
	if err := validName("product", product); err != nil {
		return "", err
	}
	if err := validName("version", version); err != nil {
		return "", err
	}
	return product + "/" + version + "/manifest.json", nil
}

func blobPath(digest string) (string, error) {
	if len(digest) != 64 {
		return "", fmt.Errorf("source: blob digest %q: want 64 hex characters: %w", digest, ErrInvalid)
	}
	for _, c := range digest {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return "", fmt.Errorf("source: blob digest %q: want lower-case hex: %w", digest, ErrInvalid)
		}
	}
	return "blobs/sha256/" + digest, nil
}
