package manifest

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"path"
	"strings"
	"time"
	"unicode/utf8"
)

// Components of a product: every File belongs to exactly one.
const (
	// ComponentDatabases holds antivirus databases and everything else that
	// is not a module.
	ComponentDatabases = "databases"
	// ComponentModules holds application modules (files under "modules/"
	// when published with Publish).
	ComponentModules = "modules"
)

// Limits on names and paths.
const (
	// MaxNameLen is the longest product or version name.
	MaxNameLen = 128
	// MaxPathLen is the longest file path in a manifest, in bytes.
	MaxPathLen = 4096
	// MaxDocumentSize is the largest latest.json or manifest.json that
	// ParseLatest and ParseManifest accept; clients should not read more.
	MaxDocumentSize = 64 << 20
	// MaxChunks is the most chunks one file may list: a 64 GiB file cut
	// by ChunkerParams (80 KiB on average) has about 800,000.
	MaxChunks = 1 << 20
)

// Latest is the content of <product>/latest.json: a pointer to the newest
// published version of a product, tied to that version's manifest by its
// SHA-256.
type Latest struct {
	Product        string    `json:"product"`
	Version        string    `json:"version"`
	Serial         uint64    `json:"serial"`
	ManifestSHA256 string    `json:"manifest_sha256"`
	Published      time.Time `json:"published"`
	// Expires, when set, is when the version stops counting as current: a
	// source that still offers it afterwards is stale (a freeze attack or
	// a forgotten mirror). Nil: it never expires.
	Expires *time.Time `json:"expires,omitempty"`
}

// Expired reports whether l has an expiry at or before now.
func (l *Latest) Expired(now time.Time) bool {
	return l.Expires != nil && !now.Before(*l.Expires)
}

// Fresh returns nil, or, once l has expired, an error saying when,
// wrapping ErrExpired.
func (l *Latest) Fresh(now time.Time) error {
	if !l.Expired(now) {
		return nil
	}
	return fmt.Errorf("%s %s (serial %d) expired at %s: %w", LatestName, l.Version, l.Serial, l.Expires.UTC().Format(time.RFC3339), ErrExpired)
}

// File is one file of a version: where it goes (Path, relative to the
// install directory), its content (Size bytes, named by SHA256) and the
// component it belongs to.
//
// An unchunked file is one blob named by SHA256. A chunked file (Chunks
// not empty) is stored only as its chunks, each a blob of its own; SHA256
// is still that of the whole file, which is the chunks' bytes in order.
type File struct {
	Path      string  `json:"path"`
	Size      int64   `json:"size"`
	SHA256    string  `json:"sha256"`
	Component string  `json:"component"`
	Chunks    []Chunk `json:"chunks,omitempty"`
}

// Chunk is a piece of a chunked file: Size bytes (> 0) named by SHA256,
// a blob of its own in the repository.
type Chunk struct {
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

// Parts returns the blobs that hold f's bytes, in file order: f itself
// when it is not chunked, else one File per chunk with f's Path and
// Component and the chunk's SHA256 and Size (a chunk repeated in f is
// listed each time).
func (f File) Parts() []File {
	if len(f.Chunks) == 0 {
		return []File{f}
	}
	out := make([]File, len(f.Chunks))
	for i, c := range f.Chunks {
		out[i] = File{Path: f.Path, Size: c.Size, SHA256: c.SHA256, Component: f.Component}
	}
	return out
}

// Manifest is the content of <product>/<version>/manifest.json: the complete
// file list of one version.
//
// A Manifest is a plain value; it is safe for concurrent reads, and the
// methods do not modify it.
type Manifest struct {
	Product   string    `json:"product"`
	Version   string    `json:"version"`
	Serial    uint64    `json:"serial"`
	Published time.Time `json:"published"`
	Files     []File    `json:"files"`
}

// ParseLatest decodes a latest.json document and validates it. It does not
// check a signature: use Trust.VerifyLatest for documents from outside.
func ParseLatest(data []byte) (*Latest, error) {
	var l Latest
	if err := decodeStrict(data, &l); err != nil {
		return nil, fmt.Errorf("parse %s: %w", LatestName, err)
	}
	if err := l.Validate(); err != nil {
		return nil, err
	}
	return &l, nil
}

// ParseManifest decodes a manifest.json document and validates it. It does
// not check a signature: use Trust.VerifyManifest for documents from
// outside.
func ParseManifest(data []byte) (*Manifest, error) {
	var m Manifest
	if err := decodeStrict(data, &m); err != nil {
		return nil, fmt.Errorf("parse %s: %w", ManifestName, err)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// decodeStrict decodes exactly one JSON object. Unknown fields are ignored
// (a newer publisher may add some; the bytes stay signed), trailing data is
// not.
func decodeStrict(data []byte, v any) error {
	if len(data) > MaxDocumentSize {
		return fmt.Errorf("document of %d bytes exceeds %d: %w", len(data), MaxDocumentSize, ErrInvalid)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%v: %w", err, ErrInvalid)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("trailing data after the JSON object: %w", ErrInvalid)
	}
	return nil
}

// Validate checks every field of l: product and version names, serial >= 1,
// the manifest digest, and a publication time.
func (l *Latest) Validate() error {
	where := fmt.Sprintf("manifest: %s of %q", LatestName, l.Product)
	if err := ValidName(l.Product); err != nil {
		return fmt.Errorf("%s: product: %w", LatestName, err)
	}
	if err := ValidName(l.Version); err != nil {
		return fmt.Errorf("%s: version: %w", where, err)
	}
	if l.Serial == 0 {
		return fmt.Errorf("%s: serial must be >= 1: %w", where, ErrInvalid)
	}
	if err := ValidDigest(l.ManifestSHA256); err != nil {
		return fmt.Errorf("%s: manifest_sha256: %w", where, err)
	}
	if l.Published.IsZero() {
		return fmt.Errorf("%s: published time missing: %w", where, ErrInvalid)
	}
	if l.Expires != nil && l.Expires.Before(l.Published) {
		return fmt.Errorf("%s: expires %s before it was published (%s): %w", where,
			l.Expires.Format(time.RFC3339), l.Published.Format(time.RFC3339), ErrInvalid)
	}
	return nil
}

// Validate checks every field of m: product and version names, serial >= 1,
// a publication time, and each file: a valid path (ValidPath), no duplicate
// path, no path that is both a file and the parent directory of another
// file, size >= 0, a valid digest, a component among ComponentDatabases
// and ComponentModules, and chunks (validChunks) that add up to the file.
func (m *Manifest) Validate() error {
	if err := ValidName(m.Product); err != nil {
		return fmt.Errorf("%s: product: %w", ManifestName, err)
	}
	where := fmt.Sprintf("manifest: %s of %s", ManifestName, m.Product)
	if err := ValidName(m.Version); err != nil {
		return fmt.Errorf("%s: version: %w", where, err)
	}
	where = fmt.Sprintf("manifest: %s of %s %s", ManifestName, m.Product, m.Version)
	if m.Serial == 0 {
		return fmt.Errorf("%s: serial must be >= 1: %w", where, ErrInvalid)
	}
	if m.Published.IsZero() {
		return fmt.Errorf("%s: published time missing: %w", where, ErrInvalid)
	}
	paths := make(map[string]struct{}, len(m.Files))
	for i := range m.Files {
		f := &m.Files[i]
		if err := ValidPath(f.Path); err != nil {
			return fmt.Errorf("%s: files[%d]: %w", where, i, err)
		}
		if _, dup := paths[f.Path]; dup {
			return fmt.Errorf("%s: file %q: listed twice: %w", where, f.Path, ErrInvalid)
		}
		paths[f.Path] = struct{}{}
		if f.Size < 0 {
			return fmt.Errorf("%s: file %q: negative size %d: %w", where, f.Path, f.Size, ErrInvalid)
		}
		if err := ValidDigest(f.SHA256); err != nil {
			return fmt.Errorf("%s: file %q: sha256: %w", where, f.Path, err)
		}
		switch f.Component {
		case ComponentDatabases, ComponentModules:
		default:
			return fmt.Errorf("%s: file %q: component %q is neither %q nor %q: %w",
				where, f.Path, f.Component, ComponentDatabases, ComponentModules, ErrInvalid)
		}
		if err := validChunks(f); err != nil {
			return fmt.Errorf("%s: file %q: %w", where, f.Path, err)
		}
	}
	// A path that is a file cannot also be a directory holding another file.
	for _, f := range m.Files {
		for dir := path.Dir(f.Path); dir != "."; dir = path.Dir(dir) {
			if _, ok := paths[dir]; ok {
				return fmt.Errorf("%s: file %q: its parent %q is also listed as a file: %w",
					where, f.Path, dir, ErrInvalid)
			}
		}
	}
	return nil
}

// validChunks checks the chunks of f: at most MaxChunks, none for an
// empty file, each with a valid digest and a size > 0, the sizes adding
// up to f.Size. A "chunks": [] in a document is the same as none.
func validChunks(f *File) error {
	switch {
	case len(f.Chunks) == 0:
		return nil
	case len(f.Chunks) > MaxChunks:
		return fmt.Errorf("%d chunks, more than %d: %w", len(f.Chunks), MaxChunks, ErrInvalid)
	case f.Size == 0:
		return fmt.Errorf("an empty file has no chunks: %w", ErrInvalid)
	}
	var sum int64
	for i, c := range f.Chunks {
		if err := ValidDigest(c.SHA256); err != nil {
			return fmt.Errorf("chunks[%d]: sha256: %w", i, err)
		}
		if c.Size <= 0 {
			return fmt.Errorf("chunks[%d]: size %d is not positive: %w", i, c.Size, ErrInvalid)
		}
		if c.Size > f.Size-sum { // no overflow: sum <= f.Size
			return fmt.Errorf("chunks[%d]: the chunks exceed the file's %d bytes: %w", i, f.Size, ErrInvalid)
		}
		sum += c.Size
	}
	if sum != f.Size {
		return fmt.Errorf("chunks add up to %d bytes, the file has %d: %w", sum, f.Size, ErrInvalid)
	}
	return nil
}

// Size returns the sum of the sizes of m's files (what an install of every
// component occupies).
func (m *Manifest) Size() int64 {
	var n int64
	for _, f := range m.Files {
		n += f.Size
	}
	return n
}

// Blobs returns the blobs this version is stored as, one per distinct
// SHA-256, in manifest order: the Parts of each file (an unchunked file
// itself, a chunked file's chunks, never a chunked file's whole digest),
// each the first part having that digest. These are the blobs to fetch
// for this version.
func (m *Manifest) Blobs() []File {
	seen := make(map[string]struct{}, len(m.Files))
	out := make([]File, 0, len(m.Files))
	for _, f := range m.Files {
		for _, p := range f.Parts() {
			if _, ok := seen[p.SHA256]; ok {
				continue
			}
			seen[p.SHA256] = struct{}{}
			out = append(out, p)
		}
	}
	return out
}

// Marshal encodes m as the indented JSON that Publish writes, ending with a
// newline. It does not validate m.
func (m *Manifest) Marshal() ([]byte, error) { return marshalDoc(m) }

// Marshal encodes l as the indented JSON that Publish writes, ending with a
// newline. It does not validate l.
func (l *Latest) Marshal() ([]byte, error) { return marshalDoc(l) }

func marshalDoc(v any) ([]byte, error) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	return append(b, '\n'), nil
}

// NewLatest returns the latest.json content pointing at m, whose encoded
// bytes are manifestData.
func NewLatest(m *Manifest, manifestData []byte) *Latest {
	return &Latest{
		Product:        m.Product,
		Version:        m.Version,
		Serial:         m.Serial,
		ManifestSHA256: SHA256Hex(manifestData),
		Published:      m.Published,
	}
}

// SHA256Hex returns the lower-case hex SHA-256 of data, the digest format of
// manifests and blob names.
func SHA256Hex(data []byte) string {
	return Digest(sha256.Sum256(data)).String()
}

// ValidName reports whether s can be a product or version name: 1 to
// MaxNameLen characters from [A-Za-z0-9._-], and neither "." nor ".."
// (names are path elements of the repository). The error wraps ErrInvalid.
func ValidName(s string) error {
	if s == "" {
		return fmt.Errorf("name is empty: %w", ErrInvalid)
	}
	if len(s) > MaxNameLen {
		return fmt.Errorf("name %q... is %d characters, more than %d: %w", s[:16], len(s), MaxNameLen, ErrInvalid)
	}
	if s == "." || s == ".." {
		return fmt.Errorf("name %q is not allowed: %w", s, ErrInvalid)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-' {
			continue
		}
		return fmt.Errorf("name %q: character %q not in [A-Za-z0-9._-]: %w", s, rune(c), ErrInvalid)
	}
	return nil
}

// ValidPath reports whether p can be a file path in a manifest: relative,
// slash-separated, clean (path.Clean(p) == p), not empty, not ".", no ".."
// element, no backslash, no NUL or other control character, valid UTF-8, at
// most MaxPathLen bytes. Such a path joined below an install directory
// never leaves it. The error wraps ErrInvalid.
func ValidPath(p string) error {
	bad := func(why string) error { return fmt.Errorf("path %q: %s: %w", p, why, ErrInvalid) }
	switch {
	case p == "":
		return fmt.Errorf("path is empty: %w", ErrInvalid)
	case len(p) > MaxPathLen:
		return fmt.Errorf("path %q... is %d bytes, more than %d: %w", p[:32], len(p), MaxPathLen, ErrInvalid)
	case !utf8.ValidString(p):
		return bad("not valid UTF-8")
	case strings.HasPrefix(p, "/"):
		return bad("must be relative")
	case strings.ContainsRune(p, '\\'):
		return bad("contains a backslash")
	case p == ".":
		return bad("names no file")
	}
	for _, r := range p {
		if r < 0x20 || r == 0x7f {
			return bad("contains a control character")
		}
	}
	for _, el := range strings.Split(p, "/") {
		if el == ".." {
			return bad(`contains a ".." element`)
		}
	}
	if c := path.Clean(p); c != p {
		return bad(fmt.Sprintf("must be clean (%q)", c))
	}
	if len(p) >= 2 && p[1] == ':' {
		return bad("looks like a drive letter")
	}
	return nil
}
