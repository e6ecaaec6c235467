package manifest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"
)

// PublishOptions says where and what Publish publishes.
type PublishOptions struct {
	// Repo is the repository root folder; it is created if missing.
	Repo string
	// Product and Version name what is published (ValidName).
	Product string
	Version string
	// Serial is the new version's serial. 0 means the previous serial + 1
	// (1 for a product's first version). A serial not higher than the
	// current latest's is refused with ErrLowerSerial.
	Serial uint64
	// Key signs manifest.json and latest.json.
	Key PrivateKey
	// Now gives the publication time (rounded down to the second, UTC);
	// nil means time.Now.
	Now func() time.Time
	// Expires is how long after publication the version counts as
	// current (latest.json's "expires"); 0 means it never expires.
	// `dpcache publish` defaults to DefaultExpiry.
	Expires time.Duration
	// AllowEmpty publishes a folder with no files: without it such a
	// folder is refused (ErrEmpty), since endpoints would install an
	// empty version and lose their databases.
	AllowEmpty bool
	// Chunk cuts every file of at least ChunkThreshold bytes into
	// content-defined chunks (Cut): the repository then stores only the
	// chunks, each a blob, and the manifest lists them, so that a new
	// version moves only the chunks that changed (a DP serves the file
	// whole too, assembled). `dpcache publish` sets it unless
	// --chunk=false; the zero PublishOptions publishes whole files.
	Chunk bool
}

// DefaultExpiry is how long a published version counts as current unless
// told otherwise: antivirus databases older than a week are outdated.
const DefaultExpiry = 168 * time.Hour

// Validate checks that opts names a repository, valid product and version
// names and a usable key.
func (o PublishOptions) Validate() error {
	if o.Repo == "" {
		return fmt.Errorf("publish: no repository folder given: %w", ErrInvalid)
	}
	if o.Expires < 0 {
		return fmt.Errorf("publish: negative expiry %v: %w", o.Expires, ErrInvalid)
	}
	if err := ValidName(o.Product); err != nil {
		return fmt.Errorf("publish: product: %w", err)
	}
	if err := ValidName(o.Version); err != nil {
		return fmt.Errorf("publish: version: %w", err)
	}
	if !o.Key.ok {
		return fmt.Errorf("publish: no signing key: %w", ErrBadKey)
	}
	return nil
}

// PublishResult reports what Publish did.
type PublishResult struct {
	// Manifest and Latest are the documents written.
	Manifest *Manifest
	Latest   *Latest
	// BlobsWritten counts the distinct blobs copied into the repository,
	// BlobsReused those already present (from earlier versions).
	BlobsWritten, BlobsReused int
	// BytesWritten is the size of the blobs written.
	BytesWritten int64
}

// Publish publishes the files under srcDir as a new version of a product
// in the repository folder opts.Repo.
//
// Every regular file under srcDir becomes a File of the manifest, with its
// slash-separated path relative to srcDir, sorted; its component is
// ComponentModules if the path starts with "modules/", else
// ComponentDatabases. Symlinks and special files are refused
// (ErrUnsupportedFile). A version whose manifest is already in the
// repository is refused (ErrVersionExists), as is a serial not higher than
// the current latest's (ErrLowerSerial).
//
// Publishing is incremental: a blob already present in blobs/sha256/ (with
// the right size) is reused, not rewritten. Every file is written
// atomically (temporary file in the same folder, sync, rename, sync of the
// folder), in an order that keeps the repository consistent for readers at
// every moment: blobs first, then each document's signature
// before the document itself (manifest.json.minisig, manifest.json,
// latest.json.minisig, latest.json). So latest.json never points at a
// missing manifest or blob, and a reader that fetches latest.json first and
// its signature second never pairs a new latest.json with an old
// signature; the reverse pairing (old latest.json, new signature) fails
// verification with ErrBadSignature for the instant between the two
// renames, and a retry succeeds. A crash leaves either the old or the new
// latest.json in place, and publishing the same version again completes
// the job as long as manifest.json was not written.
//
// New blobs are made durable in batches rather than one by one (a 1 GiB
// file is about 13,000 chunks): their temporary files are written without
// a sync, then one sync of the file system (syncfs(2) on Linux) covers a
// batch of them, and only then are they renamed to their digests; the
// blobs folder is synced once, before the documents are written. A blob's
// name never holds bytes that are not durable. Temporary files (".tmp-"
// names) left by a crashed publish are removed by a later publish once an
// hour old. A chunked file is read once: the whole file's SHA-256, the
// chunk boundaries and the chunks' digests are computed at the same time
// by different goroutines.
//
// Publish is not safe for concurrent use on the same product of the same
// repository; publishing different products concurrently is fine.
func Publish(opts PublishOptions, srcDir string) (*PublishResult, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	where := fmt.Sprintf("manifest: publish %s %s to %s", opts.Product, opts.Version, opts.Repo)
	fsPath := func(p string) string { return filepath.Join(opts.Repo, filepath.FromSlash(p)) }

	latestFile := fsPath(LatestPath(opts.Product))
	var prev uint64
	switch data, err := os.ReadFile(latestFile); {
	case err == nil:
		l, err := ParseLatest(data)
		if err != nil {
			return nil, fmt.Errorf("%s: the existing %s is unreadable, fix or remove it: %w", where, latestFile, err)
		}
		if l.Product != opts.Product {
			return nil, fmt.Errorf("%s: the existing %s is for product %q: %w", where, latestFile, l.Product, ErrInvalid)
		}
		prev = l.Serial
	case errors.Is(err, fs.ErrNotExist):
	default:
		return nil, fmt.Errorf("%s: %w", where, err)
	}

	manifestFile := fsPath(ManifestPath(opts.Product, opts.Version))
	if _, err := os.Lstat(manifestFile); err == nil {
		return nil, fmt.Errorf("%s: %s exists; publish under a new version name: %w", where, manifestFile, ErrVersionExists)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", where, err)
	}

	serial := opts.Serial
	switch {
	case serial == 0 && prev == math.MaxUint64:
		return nil, fmt.Errorf("%s: serial %d cannot grow: %w", where, prev, ErrLowerSerial)
	case serial == 0:
		serial = prev + 1
	case serial <= prev:
		return nil, fmt.Errorf("%s: serial %d is not higher than the current latest's %d: %w", where, serial, prev, ErrLowerSerial)
	}

	root, files, err := scanSource(srcDir)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	if len(files) == 0 && !opts.AllowEmpty {
		return nil, fmt.Errorf("%s: %s has no files; endpoints would install an empty version (give --allow-empty to publish it anyway): %w", where, srcDir, ErrEmpty)
	}
	m := &Manifest{
		Product:   opts.Product,
		Version:   opts.Version,
		Serial:    serial,
		Published: now().UTC().Truncate(time.Second),
		Files:     files,
	}
	// Check all but the digests (not known yet) before writing anything.
	pre := *m
	pre.Files = slices.Clone(files)
	for i := range pre.Files {
		pre.Files[i].SHA256 = strings.Repeat("0", 64)
	}
	if err := pre.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}

	res := &PublishResult{Manifest: m}
	blobDir := fsPath(BlobDir)
	if err := mkdirAll(blobDir); err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	removeStaleTemps(blobDir)
	store := newBlobStore(blobDir, res)
	defer store.abort() // after finish: nothing left to do
	// A chunked file is stored as its chunks only; the others whole.
	for i := range m.Files {
		b := &m.Files[i]
		src := filepath.Join(root, filepath.FromSlash(b.Path))
		if opts.Chunk && b.Size >= ChunkThreshold {
			if err := chunkFile(src, store, b); err != nil {
				return nil, fmt.Errorf("%s: %w", where, err)
			}
			continue
		}
		if err := storeWhole(src, store, b); err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
	}
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	// Every blob durable under its name before any document names it.
	if err := store.finish(); err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}

	mdata, err := m.Marshal()
	if err != nil {
		return nil, err
	}
	l := NewLatest(m, mdata)
	if opts.Expires > 0 {
		exp := m.Published.Add(opts.Expires)
		l.Expires = &exp
	}
	ldata, err := l.Marshal()
	if err != nil {
		return nil, err
	}
	msig, err := opts.Key.SignFile(mdata, ManifestName)
	if err != nil {
		return nil, err
	}
	lsig, err := opts.Key.SignFile(ldata, LatestName)
	if err != nil {
		return nil, err
	}
	if err := mkdirAll(filepath.Dir(manifestFile)); err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	// Signature before document: the document's presence marks it whole.
	for _, w := range []struct {
		path string
		data []byte
	}{
		{manifestFile + SigSuffix, msig},
		{manifestFile, mdata},
		{latestFile + SigSuffix, lsig},
		{latestFile, ldata},
	} {
		if _, err := writeAtomic(w.path, bytes.NewReader(w.data), nil, true); err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
	}
	res.Latest = l
	return res, nil
}

// scanSource lists the regular files under srcDir with their digests,
// sorted by slash path. It returns the resolved root folder too.
func scanSource(srcDir string) (string, []File, error) {
	root, err := filepath.EvalSymlinks(srcDir)
	if err != nil {
		return "", nil, fmt.Errorf("source folder: %w", err)
	}
	if fi, err := os.Stat(root); err != nil {
		return "", nil, fmt.Errorf("source folder: %w", err)
	} else if !fi.IsDir() {
		return "", nil, fmt.Errorf("source %s is not a folder: %w", srcDir, ErrInvalid)
	}
	var rels []string
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == root {
			return nil
		}
		switch t := d.Type(); {
		case t.IsDir():
			return nil
		case t.IsRegular():
		case t&fs.ModeSymlink != 0:
			return fmt.Errorf("source file %s is a symlink; publish only regular files (copy its target instead): %w", p, ErrUnsupportedFile)
		default:
			return fmt.Errorf("source file %s is not a regular file (%v): %w", p, t, ErrUnsupportedFile)
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if err := ValidPath(rel); err != nil {
			return fmt.Errorf("source file %s: %w", p, err)
		}
		rels = append(rels, rel)
		return nil
	})
	if err != nil {
		return "", nil, err
	}
	sort.Strings(rels)
	files := make([]File, 0, len(rels))
	for _, rel := range rels {
		fi, err := os.Stat(filepath.Join(root, filepath.FromSlash(rel)))
		if err != nil {
			return "", nil, fmt.Errorf("source file: %w", err)
		}
		comp := ComponentDatabases
		if strings.HasPrefix(rel, ComponentModules+"/") {
			comp = ComponentModules
		}
		files = append(files, File{Path: rel, Size: fi.Size(), Component: comp})
	}
	return root, files, nil
}

// storeWhole hashes the source file of f, sets f.SHA256 and f.Size, and
// stores the file as one blob unless the repository has it. The bytes
// stored are checked against the digest (the source may change under us).
func storeWhole(src string, s *blobStore, f *File) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("source file: %w", err)
	}
	defer in.Close()
	h := sha256.New()
	n, err := copyBuffered(h, in)
	if err != nil {
		return fmt.Errorf("source file %s: %w", f.Path, err)
	}
	f.SHA256, f.Size = hex.EncodeToString(h.Sum(nil)), n
	if !s.claim(f.SHA256, n) {
		return nil
	}
	if _, err := in.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("source file %s: %w", f.Path, err)
	}
	h.Reset()
	if err := s.put(f.SHA256, io.TeeReader(in, h), func() error { return checkDigest(h, *f) }); err != nil {
		return fmt.Errorf("blob of %s: %w", f.Path, err)
	}
	return nil
}

func checkDigest(h hash.Hash, f File) error {
	if got := hex.EncodeToString(h.Sum(nil)); got != f.SHA256 {
		return fmt.Errorf("source file %s changed while publishing (sha256 %s, was %s)", f.Path, got, f.SHA256)
	}
	return nil
}
