package agent

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/dpcache/dpcache/manifest"
)

// folderVersion is a version folder of a mirror: <product>/<name>/ with
// its manifest.
type folderVersion struct {
	product, name string
	serial        uint64
	blobs         []string
}

// pruneMirror keeps product's keep newest versions in the mirror at root
// (by serial), the version its latest.json names and pinned, and removes
// the others, in an order that keeps the folder consistent for a server
// reading it meanwhile: a removed version's manifest first (nothing points
// to it any more), then its signature and its emptied folder, then the
// blobs that no manifest left in the folder, of any product, uses. A blob
// shared with a kept version, or with another product, stays. When a
// manifest in the folder is unreadable, no blob is removed (what it uses is
// unknown) and the run says so in the log. It returns the versions removed,
// oldest first, and how many blobs went with them. Call with the mirror's
// lock held.
func pruneMirror(root, product string, keep int, pinned string, log *slog.Logger) (removed []string, blobs int, err error) {
	removed = []string{}
	all, unreadable, err := folderManifests(root)
	if err != nil {
		return removed, 0, err
	}
	var mine []folderVersion
	for _, v := range all {
		if v.product == product {
			mine = append(mine, v)
		}
	}
	// Newest first.
	slices.SortFunc(mine, func(a, b folderVersion) int {
		return cmp.Or(cmp.Compare(b.serial, a.serial), strings.Compare(b.name, a.name))
	})
	latest := ""
	if l := folderLatest(root, product, log); l != nil {
		latest = l.Version
	}
	gone := map[string]bool{}
	for i := len(mine) - 1; i >= keep; i-- { // oldest first
		v := mine[i]
		if v.name == latest || v.name == pinned {
			continue
		}
		if err := removeVersionDocs(filepath.Join(root, product, v.name)); err != nil {
			return removed, 0, err
		}
		gone[v.name] = true
		removed = append(removed, v.name)
	}
	if len(removed) == 0 {
		return removed, 0, nil
	}
	if err := manifest.SyncDir(filepath.Join(root, product)); err != nil {
		return removed, 0, &localError{err}
	}
	log.Info("removed old versions", "versions", removed, "kept", keep)
	if len(unreadable) > 0 {
		log.Warn("old blobs not removed: a manifest in the folder is unreadable, so what it uses is unknown; fix or remove it",
			"manifest", unreadable[0], "unreadable", len(unreadable))
		return removed, 0, nil
	}
	used := map[string]bool{}
	for _, v := range all {
		if v.product == product && gone[v.name] {
			continue
		}
		for _, d := range v.blobs {
			used[d] = true
		}
	}
	blobDir := filepath.Join(root, filepath.FromSlash(manifest.BlobDir))
	entries, err := os.ReadDir(blobDir)
	if err != nil {
		return removed, 0, &localError{err}
	}
	for _, e := range entries {
		// Only blobs: whatever else someone put there is not ours.
		if used[e.Name()] || !e.Type().IsRegular() || manifest.ValidDigest(e.Name()) != nil {
			continue
		}
		if err := os.Remove(filepath.Join(blobDir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return removed, blobs, &localError{err}
		}
		blobs++
	}
	if blobs > 0 {
		if err := manifest.SyncDir(blobDir); err != nil {
			return removed, blobs, &localError{err}
		}
	}
	log.Info("removed blobs no kept version uses", "blobs", blobs)
	return removed, blobs, nil
}

// removeVersionDocs removes a version folder's manifest, then its
// signature, then the folder if nothing else is in it.
func removeVersionDocs(dir string) error {
	doc := filepath.Join(dir, manifest.ManifestName)
	for _, p := range []string{doc, manifest.SigPath(doc)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return &localError{err}
		}
	}
	if empty(dir) {
		if err := os.Remove(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return &localError{err}
		}
	}
	return nil
}

// folderManifests reads every <product>/<version>/manifest.json of the
// mirror at root, of every product. unreadable names the manifests that
// exist but could not be read or parsed.
func folderManifests(root string) (vs []folderVersion, unreadable []string, err error) {
	products, err := os.ReadDir(root)
	if err != nil {
		return nil, nil, &localError{err}
	}
	blobTop, _, _ := strings.Cut(manifest.BlobDir, "/")
	for _, p := range products {
		if !p.IsDir() || p.Name() == blobTop || strings.HasPrefix(p.Name(), ".") {
			continue
		}
		versions, err := os.ReadDir(filepath.Join(root, p.Name()))
		if err != nil {
			return nil, nil, &localError{err}
		}
		for _, v := range versions {
			if !v.IsDir() {
				continue
			}
			path := filepath.Join(root, p.Name(), v.Name(), manifest.ManifestName)
			data, err := os.ReadFile(path)
			if errors.Is(err, fs.ErrNotExist) {
				continue // not a version folder
			}
			var m *manifest.Manifest
			if err == nil {
				m, err = manifest.ParseManifest(data)
			}
			if err != nil {
				unreadable = append(unreadable, fmt.Sprintf("%s: %v", path, err))
				continue
			}
			fv := folderVersion{product: p.Name(), name: v.Name(), serial: m.Serial}
			for _, f := range m.Blobs() {
				fv.blobs = append(fv.blobs, f.SHA256)
			}
			vs = append(vs, fv)
		}
	}
	return vs, unreadable, nil
}
