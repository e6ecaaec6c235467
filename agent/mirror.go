package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/source"
	"github.com/dpcache/dpcache/source/failover"
)

// MirrorConfig says what Mirror copies, from where, to which folder.
type MirrorConfig struct {
	// Sources are tried in order, as for Update. Required.
	Sources []source.Source
	// Product to copy. Required.
	Product string
	// Version to copy; empty means the sources' latest. An older version is
	// added to the folder without touching its latest.json.
	Version string
	// To is the repository folder written (created if missing). Required.
	To string
	// Trust verifies every signed document. Required.
	Trust *manifest.Trust
	// Concurrency is how many blobs are fetched at once. Default 4.
	Concurrency int
	// StallTimeout is as in Config. Default 30 s.
	StallTimeout time.Duration
	// KeepVersions is how many versions of the product the folder keeps
	// after a successful run, the newest by serial; the version its
	// latest.json names and the one this run copied are kept whatever
	// their age. Older version folders are removed, then the blobs that no
	// manifest left in the folder (of any product) uses. 0, the zero
	// value, keeps every version; `dpcache mirror` passes
	// DefaultMirrorKeepVersions.
	KeepVersions int
	// Progress, when set, is called as blob bytes arrive (as in Config).
	Progress func(done, total int64)
	// Logger receives the run's events. Default: discard.
	Logger *slog.Logger
}

// DefaultMirrorKeepVersions is the number of versions `dpcache mirror`
// keeps per product, as a DP's cache does (node's --keep-versions).
const DefaultMirrorKeepVersions = 3

// MirrorResult reports what Mirror did.
type MirrorResult struct {
	Product string `json:"product"`
	Version string `json:"version"`
	// Serial is the latest.json's serial when the sources' latest was
	// mirrored (above the manifest's for a re-signed version), else the
	// manifest's.
	Serial uint64 `json:"serial"`
	// Status is StatusUpdated when the run wrote a blob or a document of
	// the version, StatusUpToDate when the folder already held it exactly
	// (no served file was rewritten), and StatusStale, either way, when
	// every source offered an expired latest.json: the folder is then as
	// stale as its sources.
	Status string `json:"status"`
	// Source that served the documents.
	Source string `json:"source"`
	// BlobsCopied were fetched; BlobsKept were already in the folder,
	// verified.
	BlobsCopied     int   `json:"blobs_copied"`
	BlobsKept       int   `json:"blobs_kept"`
	BytesDownloaded int64 `json:"bytes_downloaded"`
	// LatestUpdated is true when this run wrote the folder's latest.json
	// (it now names this version and was not that document before).
	LatestUpdated bool `json:"latest_updated"`
	// VersionsRemoved are the product's version folders removed for
	// KeepVersions, oldest first; BlobsRemoved counts the blobs removed
	// with them (those no kept manifest uses).
	VersionsRemoved []string `json:"versions_removed"`
	BlobsRemoved    int      `json:"blobs_removed"`
}

// Mirror copies one version of a product from the sources into a folder in
// repository layout (the update utility's job: a shared folder, an
// air-gapped network, a DP's export), so that the folder then works as a
// file://, nginx or FTP source. Every document is verified, every blob is
// checked against its SHA-256; blobs already in the folder are verified and
// kept; downloads resume at their offset. The signed documents are written
// last, each atomically (signature first) and only when they changed, so a
// reader never sees a latest.json naming blobs the folder lacks, and a run
// that finds nothing new rewrites nothing. The folder's latest.json is never
// replaced by a lower serial: a source offering one is passed over for the
// next. Sources whose latest.json has expired are passed over too; when
// every source is stale, the newest version offered is copied all the same
// and the result says StatusStale.
//
// Documents are copied as signed, so the folder is as fresh as its last
// run. A version re-signed upstream (`dpcache resign`: a new latest.json
// under a higher serial pinning the same manifest) copies the new
// latest.json alone: the manifest, already in the folder byte for byte, is
// not rewritten, and the blobs, verified in place, are not fetched again.
//
// Partial downloads wait in To/.dpcache-partial/ (mode 0700, outside every
// repository path), which exists only while it holds one; it also holds the
// lock that keeps two runs from writing one folder at once (ErrBusy).
func Mirror(ctx context.Context, cfg MirrorConfig) (*MirrorResult, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "mirror", "product", cfg.Product)
	res, err := mirror(ctx, cfg, log)
	if err != nil {
		return nil, fmt.Errorf("mirror %s%s: %w%s", cfg.Product, where(" to ", cfg.To, err), err, localAdvice(err))
	}
	return res, nil
}

func (c *MirrorConfig) validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("mirror: %s: %w", fmt.Sprintf(format, args...), ErrInvalidConfig)
	}
	switch {
	case len(c.Sources) == 0:
		return bad("no source; give at least one")
	case c.To == "":
		return bad("no destination folder")
	case c.Trust == nil:
		return bad("no trusted key")
	}
	if err := manifest.ValidName(c.Product); err != nil {
		return bad("product: %v", err)
	}
	if c.Version != "" {
		if err := manifest.ValidName(c.Version); err != nil {
			return bad("version: %v", err)
		}
	}
	if c.Concurrency <= 0 {
		c.Concurrency = DefaultConfig().Concurrency
	}
	if c.StallTimeout < 0 {
		return bad("negative stall timeout %v", c.StallTimeout)
	}
	if c.KeepVersions < 0 {
		return bad("keep versions %d is negative; 0 keeps every version", c.KeepVersions)
	}
	return nil
}

// mirrorDocs are the verified documents of the version being mirrored.
type mirrorDocs struct {
	src     string        // the source that served the manifest
	latestS source.Signed // empty when an explicit older version is mirrored
	latest  *manifest.Latest
	manS    source.Signed
	man     *manifest.Manifest
	stale   bool // every source offered an expired latest.json
}

func mirror(ctx context.Context, cfg MirrorConfig, log *slog.Logger) (res *MirrorResult, err error) {
	partDir, release, err := mirrorLock(cfg.To)
	if err != nil {
		return nil, err
	}
	defer func() {
		if rerr := release(err == nil); rerr != nil && err == nil {
			err = rerr
		}
	}()
	cur := folderLatest(cfg.To, cfg.Product, log)
	// Documents and blobs share the run's memory of failed sources.
	health := failover.NewHealth(failover.Backoff{})
	docs, err := mirrorResolve(ctx, cfg, cur, health, log)
	if err != nil {
		return nil, err
	}
	m := docs.man
	// The serial the documents stand for: the latest.json's when it is
	// mirrored (a re-signed version's is above its manifest's).
	serial := m.Serial
	if docs.latest != nil {
		serial = docs.latest.Serial
	}
	// An explicit older version leaves a newer latest.json alone.
	updateLatest := docs.latest != nil && (cur == nil || cur.Serial <= docs.latest.Serial)
	blobDir := filepath.Join(cfg.To, filepath.FromSlash(manifest.BlobDir))
	if err := os.MkdirAll(blobDir, 0o755); err != nil {
		return nil, &localError{err}
	}
	jobs, err := groupBlobs(blobFiles(m.Files)) // a chunked file's chunks, not the file
	if err != nil {
		return nil, err
	}
	res = &MirrorResult{Product: cfg.Product, Version: m.Version, Serial: serial, Source: docs.src, VersionsRemoved: []string{}}
	// Blobs already in the folder are kept if they verify.
	var missing []*blobJob
	var total int64
	for _, j := range jobs {
		if verifyFile(filepath.Join(blobDir, j.digest), j.digest, j.size) {
			res.BlobsKept++
			continue
		}
		missing = append(missing, j)
		total += j.size
	}
	f := &fetcher{
		chain: newChain(withVersionHint(cfg.Sources, cfg.Product, m.Version), health, cfg.StallTimeout, log, nil),
		dir:   blobDir, partDir: partDir, log: log, progress: cfg.Progress, total: total,
	}
	if err := eachJob(ctx, missing, cfg.Concurrency, f.fetch); err != nil {
		return nil, err
	}
	res.BlobsCopied, res.BytesDownloaded = len(missing), f.downloaded.Load()
	if len(missing) > 0 {
		if err := manifest.SyncDir(blobDir); err != nil {
			return nil, &localError{err}
		}
	}
	// Documents last, the manifest before the latest.json that names it.
	manChanged, err := writeDoc(cfg.To, manifest.ManifestPath(cfg.Product, m.Version), docs.manS)
	if err != nil {
		return nil, err
	}
	if updateLatest {
		if res.LatestUpdated, err = writeDoc(cfg.To, manifest.LatestPath(cfg.Product), docs.latestS); err != nil {
			return nil, err
		}
	}
	switch {
	case docs.stale:
		res.Status = StatusStale
	case res.BlobsCopied > 0 || manChanged || res.LatestUpdated:
		res.Status = StatusUpdated
	default:
		res.Status = StatusUpToDate
	}
	log.Info("mirrored", "version", m.Version, "serial", serial, "status", res.Status,
		"copied", res.BlobsCopied, "kept", res.BlobsKept, "bytes", res.BytesDownloaded)
	if cfg.KeepVersions > 0 {
		if res.VersionsRemoved, res.BlobsRemoved, err = pruneMirror(cfg.To, cfg.Product, cfg.KeepVersions, m.Version, log); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// folderLatest returns the folder's own latest.json for product, or nil
// when it has none that parses. It is the folder's, written by an earlier
// run from verified bytes: it is parsed, not verified again (a folder
// whose trusted key was rotated away must not be stuck).
func folderLatest(root, product string, log *slog.Logger) *manifest.Latest {
	p := filepath.Join(root, filepath.FromSlash(manifest.LatestPath(product)))
	data, err := os.ReadFile(p)
	if err != nil {
		return nil
	}
	l, err := manifest.ParseLatest(data)
	if err != nil {
		log.Warn("the folder's latest.json is unreadable; it will be replaced", "path", p, "err", err)
		return nil
	}
	return l
}

// mirrorResolve fetches and verifies the documents through the failover
// engine: the latest.json (not needed for an explicit older version) and
// the manifest. A latest.json below the folder's serial (cur), or at its
// serial with other content, is refused and the next source asked; so is
// an expired one, unless every source offers an expired one.
func mirrorResolve(ctx context.Context, cfg MirrorConfig, cur *manifest.Latest, health *failover.Health, log *slog.Logger) (*mirrorDocs, error) {
	d := &mirrorDocs{}
	version := cfg.Version
	check := func(s source.Signed) (*manifest.Latest, error) {
		l, err := verifyLatest(cfg.Trust, cfg.Product, s)
		if err != nil || cur == nil {
			return l, err
		}
		switch {
		case l.Serial < cur.Serial && version == "":
			return nil, fmt.Errorf("offers %s serial %d, %s holds %s serial %d; refusing to go back: %w",
				l.Version, l.Serial, cfg.To, cur.Version, cur.Serial, ErrLowerSerial)
		case l.Serial == cur.Serial && (l.Version != cur.Version || l.ManifestSHA256 != cur.ManifestSHA256):
			return nil, fmt.Errorf("offers %s serial %d (manifest sha256 %s), %s holds %s serial %d (manifest sha256 %s): %w",
				l.Version, l.Serial, l.ManifestSHA256, cfg.To, cur.Version, cur.Serial, cur.ManifestSHA256, ErrSerialConflict)
		}
		return l, nil
	}
	chain := newChainHint(cfg.Sources, health, cfg.StallTimeout, log, mirrorHint, func(kind string, s source.Signed) (err error) {
		if kind == failover.KindLatest {
			if d.latest, err = check(s); err == nil {
				if stale := d.latest.Fresh(time.Now()); stale != nil {
					return failover.Stale(stale, d.latest.Serial)
				}
			}
			return err
		}
		d.man, err = verifyManifest(cfg.Trust, cfg.Product, version, d.latest, s)
		return err
	})
	var err error
	d.latestS, err = chain.Latest(ctx, cfg.Product)
	if err == nil && d.latestS.Stale {
		// No source is current: the newest expired offer, which the hook
		// saw verify (d.latest holds the last one it saw).
		d.latest, err = check(d.latestS)
		d.stale = err == nil
	}
	switch {
	case err != nil && version == "":
		return nil, productNotFound(err)
	case err == nil && (version == "" || version == d.latest.Version):
		version = d.latest.Version
	default:
		// An explicit version other than the latest: its manifest alone.
		d.latestS, d.latest, d.stale = source.Signed{}, nil, false
	}
	if d.manS, err = chain.Manifest(ctx, cfg.Product, version); err != nil {
		return nil, named(err, fmt.Sprintf("version %q of %q", version, cfg.Product))
	}
	d.src = d.manS.Source
	return d, nil
}

// mirrorHint is hint in a mirror's words.
func mirrorHint(err error) string {
	switch {
	case errors.Is(err, ErrLowerSerial):
		return "the source is older than the folder; use an up-to-date source (--version adds an older version without touching latest.json)"
	case errors.Is(err, ErrSerialConflict):
		return "the source and the folder disagree about that serial; check which one the vendor published"
	}
	return hint(err)
}

// writeDoc writes a signed document into the folder, its signature first
// (as Publish does), each atomically and only when its bytes differ from
// the file there: a rerun that finds nothing new leaves the served files,
// and their mtimes (an HTTP server's ETag and Last-Modified), alone. It
// reports whether it wrote anything.
func writeDoc(root, rel string, s source.Signed) (changed bool, err error) {
	p := filepath.Join(root, filepath.FromSlash(rel))
	for _, f := range []struct {
		path string
		data []byte
	}{{manifest.SigPath(p), s.Signature}, {p, s.Data}} {
		if old, err := os.ReadFile(f.path); err == nil && bytes.Equal(old, f.data) {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return changed, &localError{err}
		}
		if err := manifest.WriteFileAtomic(f.path, f.data); err != nil {
			return changed, &localError{err}
		}
		changed = true
	}
	return changed, nil
}

// mirrorPartDir holds a mirror's partial downloads and its lock, beside
// the repository layout: a dot-directory that no repository path reaches,
// of mode 0700 so that a web server running under its own account cannot
// read it, and removed whenever it holds no partial download.
const mirrorPartDir = ".dpcache-partial"

// mirrorLockName is the lock file in mirrorPartDir, held for a whole run:
// pruning must not remove blobs that another run has copied for a
// manifest it has not written yet.
const mirrorLockName = "lock"

// mirrorLock creates root (if missing) and its partial folder, and locks
// the folder for one run. release removes the lock file, the partial
// downloads when the run succeeded (it needed none of them, so they belong
// to versions it did not copy), the partial folder when that leaves it
// empty, and root when this run created it and leaves it empty.
func mirrorLock(root string) (partDir string, release func(ok bool) error, err error) {
	_, statErr := os.Stat(root)
	created := errors.Is(statErr, fs.ErrNotExist)
	if err := os.MkdirAll(root, 0o755); err != nil {
		return "", nil, &localError{err}
	}
	partDir = filepath.Join(root, mirrorPartDir)
	lockPath := filepath.Join(partDir, mirrorLockName)
	var unlock func()
	for attempt := 0; ; attempt++ {
		if err := os.Mkdir(partDir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return "", nil, &localError{err}
		}
		// A folder left by an older dpcache may be 0755.
		_ = os.Chmod(partDir, 0o700)
		unlock, err = lockFile(lockPath)
		// A run finishing meanwhile may remove the folder between Mkdir
		// and the lock: make it again.
		if err == nil || !errors.Is(err, fs.ErrNotExist) || attempt == 3 {
			break
		}
	}
	if err != nil {
		if errors.Is(err, ErrBusy) {
			err = &busyError{fmt.Sprintf("another mirror is writing %s (%s is locked); wait for it to finish", root, lockPath)}
		}
		return "", nil, err
	}
	return partDir, func(ok bool) error {
		defer unlock()
		var errs []error
		if ok {
			errs = append(errs, removeChildren(partDir, func(name string) bool { return !strings.HasSuffix(name, partSuffix) }))
		}
		// Removed while locked: a run that opened it before is told by
		// lockFile that its lock is stale.
		if err := os.Remove(lockPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, &localError{err})
		}
		if empty(partDir) {
			if err := os.Remove(partDir); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, &localError{err})
			}
		}
		if created && !ok && empty(root) {
			_ = os.Remove(root)
		}
		return errors.Join(errs...)
	}, nil
}

// busyError is ErrBusy in a mirror's words.
type busyError struct{ msg string }

func (e *busyError) Error() string { return e.msg }
func (e *busyError) Unwrap() error { return ErrBusy }

// empty reports whether dir exists and has no entry.
func empty(dir string) bool {
	entries, err := os.ReadDir(dir)
	return err == nil && len(entries) == 0
}
