package agent

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
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
	// Progress, when set, is called as blob bytes arrive (as in Config).
	Progress func(done, total int64)
	// Logger receives the run's events. Default: discard.
	Logger *slog.Logger
}

// MirrorResult reports what Mirror did.
type MirrorResult struct {
	Product string `json:"product"`
	Version string `json:"version"`
	// Serial is the latest.json's serial when the sources' latest was
	// mirrored (above the manifest's for a re-signed version), else the
	// manifest's.
	Serial uint64 `json:"serial"`
	// Source that served the documents.
	Source string `json:"source"`
	// BlobsCopied were fetched; BlobsKept were already in the folder,
	// verified.
	BlobsCopied     int   `json:"blobs_copied"`
	BlobsKept       int   `json:"blobs_kept"`
	BytesDownloaded int64 `json:"bytes_downloaded"`
	// LatestUpdated is true when the folder's latest.json now names this
	// version.
	LatestUpdated bool `json:"latest_updated"`
}

// Mirror copies one version of a product from the sources into a folder in
// repository layout (the update utility's job: a shared folder, an
// air-gapped network, a DP's export), so that the folder then works as a
// file://, nginx or FTP source. Every document is verified, every blob is
// checked against its SHA-256; blobs already in the folder are verified and
// kept; downloads resume at their offset. The signed documents are written
// last, each atomically (signature first), so a reader never sees a
// latest.json naming blobs the folder lacks. The folder's latest.json is
// never replaced by a lower serial.
//
// Documents are copied as signed, so the folder is as fresh as its last
// run. A version re-signed upstream (`dpcache resign`: a new latest.json
// under a higher serial pinning the same manifest) copies the new
// latest.json alone: the manifest, already in the folder byte for byte, is
// not rewritten, and the blobs, verified in place, are not fetched again.
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
	return nil
}

// mirrorDocs are the verified documents of the version being mirrored.
type mirrorDocs struct {
	src     string        // the source that served the manifest
	latestS source.Signed // empty when an explicit older version is mirrored
	latest  *manifest.Latest
	manS    source.Signed
	man     *manifest.Manifest
}

func mirror(ctx context.Context, cfg MirrorConfig, log *slog.Logger) (*MirrorResult, error) {
	health := failover.NewHealth(failover.Backoff{})
	docs, err := mirrorResolve(ctx, cfg, health, log)
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
	// The folder's own latest: never replaced by a lower serial.
	updateLatest := docs.latest != nil
	if data, err := os.ReadFile(filepath.Join(cfg.To, filepath.FromSlash(manifest.LatestPath(cfg.Product)))); err == nil {
		if cur, err := manifest.ParseLatest(data); err == nil && cur.Serial > serial {
			if cfg.Version == "" {
				return nil, fmt.Errorf("the sources' latest is %s serial %d but %s already holds serial %d: %w",
					m.Version, serial, cfg.To, cur.Serial, ErrLowerSerial)
			}
			updateLatest = false
		}
	}
	blobDir := filepath.Join(cfg.To, filepath.FromSlash(manifest.BlobDir))
	// Partial downloads wait outside the served tree: a web server pointed
	// at the folder never serves half a blob.
	partDir := filepath.Join(cfg.To, mirrorPartDir)
	for _, d := range []string{blobDir, partDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, &localError{err}
		}
	}
	jobs, err := groupBlobs(m.Files)
	if err != nil {
		return nil, err
	}
	res := &MirrorResult{Product: cfg.Product, Version: m.Version, Serial: serial, Source: docs.src}
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
	if err := manifest.SyncDir(blobDir); err != nil {
		return nil, &localError{err}
	}
	// Documents last, signature before document (as Publish does). A
	// document already in the folder byte for byte, signature included,
	// is left alone (a published manifest never changes).
	write := func(rel string, s source.Signed) error {
		p := filepath.Join(cfg.To, filepath.FromSlash(rel))
		if sameFile(p, s.Data) && sameFile(manifest.SigPath(p), s.Signature) {
			return nil
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return &localError{err}
		}
		if err := manifest.WriteFileAtomic(manifest.SigPath(p), s.Signature); err != nil {
			return &localError{err}
		}
		if err := manifest.WriteFileAtomic(p, s.Data); err != nil {
			return &localError{err}
		}
		return nil
	}
	if err := write(manifest.ManifestPath(cfg.Product, m.Version), docs.manS); err != nil {
		return nil, err
	}
	if updateLatest {
		if err := write(manifest.LatestPath(cfg.Product), docs.latestS); err != nil {
			return nil, err
		}
		res.LatestUpdated = true
	}
	log.Info("mirrored", "version", m.Version, "serial", serial, "copied", res.BlobsCopied, "kept", res.BlobsKept, "bytes", res.BytesDownloaded)
	return res, nil
}

// mirrorResolve fetches and verifies the documents through the failover
// engine: the latest.json (not needed for an explicit older version) and
// the manifest.
func mirrorResolve(ctx context.Context, cfg MirrorConfig, health *failover.Health, log *slog.Logger) (*mirrorDocs, error) {
	d := &mirrorDocs{}
	version := cfg.Version
	chain := newChain(cfg.Sources, health, cfg.StallTimeout, log, func(kind string, s source.Signed) (err error) {
		if kind == failover.KindLatest {
			d.latest, err = verifyLatest(cfg.Trust, cfg.Product, s)
			return err
		}
		d.man, err = verifyManifest(cfg.Trust, cfg.Product, version, d.latest, s)
		return err
	})
	var err error
	d.latestS, err = chain.Latest(ctx, cfg.Product)
	switch {
	case err != nil && version == "":
		return nil, productNotFound(err)
	case err == nil && (version == "" || version == d.latest.Version):
		version = d.latest.Version
	default:
		// An explicit version other than the latest: its manifest alone.
		d.latestS, d.latest = source.Signed{}, nil
	}
	if d.manS, err = chain.Manifest(ctx, cfg.Product, version); err != nil {
		return nil, named(err, fmt.Sprintf("version %q of %q", version, cfg.Product))
	}
	d.src = d.manS.Source
	return d, nil
}

// sameFile reports whether the file at p holds exactly data.
func sameFile(p string, data []byte) bool {
	b, err := os.ReadFile(p)
	return err == nil && bytes.Equal(b, data)
}

// mirrorPartDir holds a mirror's partial downloads, beside the repository
// layout (a dot-directory no repository path reaches), so that an
// interrupted mirror resumes without exposing incomplete blobs.
const mirrorPartDir = ".dpcache-partial"
