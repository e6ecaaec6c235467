package source

import (
	"fmt"
	"net/url"
)

// The repository layout (DESIGN.md). Kept here rather than imported from
// package manifest so that sources depend only on the layout, not on the
// documents' schema; manifest_test checks both agree.

func latestPath(product string) string { return url.PathEscape(product) + "/latest.json" }

func manifestPath(product, version string) string {
	return url.PathEscape(product) + "/" + url.PathEscape(version) + "/manifest.json"
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
