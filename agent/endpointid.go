package agent

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"unicode"

	"github.com/dpcache/dpcache/manifest"
)

// EndpointIDFileName is the file, in an install root (Config.Dir), that
// keeps the installation's endpoint id. An admin may write an id of their
// own there (one line).
const EndpointIDFileName = ".dpcache-id"

// maxEndpointIDLen is the longest endpoint id a DP accepts.
const maxEndpointIDLen = 256

// EndpointID returns the endpoint id of the installation rooted at dir:
// the one kept in dir/.dpcache-id, generated on first use (128 random
// bits, in hex) and created atomically, so that concurrent first runs
// agree: the first writer wins. dir is created if missing. An id that
// ValidEndpointID refuses is ErrBadEndpointID.
//
// It is safe to call concurrently, from several processes too.
func EndpointID(dir string) (string, error) {
	p := filepath.Join(dir, EndpointIDFileName)
	id, err := readEndpointID(p)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return id, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", &localError{fmt.Errorf("create %s: %w", dir, err)}
	}
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	id = hex.EncodeToString(b[:])
	// Written whole under a name of its own, then linked into place:
	// link(2) never replaces a file, so the first writer wins and no
	// reader sees a partial id.
	tmp := filepath.Join(dir, EndpointIDFileName+"."+id+".tmp")
	if err := manifest.WriteNewFile(tmp, []byte(id+"\n"), 0o644); err != nil {
		return "", &localError{err}
	}
	defer os.Remove(tmp)
	switch err := os.Link(tmp, p); {
	case err == nil:
		if err := manifest.SyncDir(dir); err != nil {
			return "", &localError{err}
		}
		return id, nil
	case errors.Is(err, fs.ErrExist):
		return readEndpointID(p) // another run was first
	default:
		// A file system without hard links: exclusive creation still
		// lets only one writer win.
		if err := manifest.WriteNewFile(p, []byte(id+"\n"), 0o644); err != nil {
			if errors.Is(err, fs.ErrExist) {
				return readEndpointID(p)
			}
			return "", &localError{fmt.Errorf("create %s: %w", p, err)}
		}
		return id, manifest.SyncDir(dir)
	}
}

func readEndpointID(p string) (string, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
		return "", &localError{fmt.Errorf("read endpoint id: %w", err)}
	}
	id := strings.TrimSpace(string(b))
	if err := ValidEndpointID(id); err != nil {
		return "", fmt.Errorf("%s: %w; remove the file to have a new id generated", p, err)
	}
	return id, nil
}

// ValidEndpointID checks an endpoint id as a DP does: 1 to 256 bytes,
// printable, with no '/'. Errors wrap ErrBadEndpointID.
func ValidEndpointID(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("empty: %w", ErrBadEndpointID)
	case len(id) > maxEndpointIDLen:
		return fmt.Errorf("%d bytes, more than %d: %w", len(id), maxEndpointIDLen, ErrBadEndpointID)
	case strings.ContainsFunc(id, func(r rune) bool { return r == '/' || !unicode.IsPrint(r) }):
		return fmt.Errorf("%q has a '/' or a character that is not printable: %w", id, ErrBadEndpointID)
	}
	return nil
}
