package agent

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/source"
)

// resign publishes r's current version again under the next serial, with
// an expiry of a week.
func (r *repo) resign(t testing.TB) *manifest.Latest {
	t.Helper()
	res, err := manifest.Resign(manifest.ResignOptions{Repo: r.dir, Product: product, Key: r.key, Expires: 168 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return res.Latest
}

// versionDirs lists the installed version directories.
func versionDirs(t testing.TB, cfg Config) []string {
	t.Helper()
	entries, err := os.ReadDir(newLayout(cfg.Dir, product).versions)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// TestUpdate_ResignedIsUpToDate: a latest.json re-signed under a higher
// serial pins the installed manifest: the run is up-to-date with the new
// serial, fetches no manifest or blob, stages nothing, reports that serial,
// and stays up-to-date run after run (no reinstall loop). The pre-resign
// latest.json (a mirror not caught up yet) still says up-to-date.
func TestUpdate_ResignedIsUpToDate(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	r.publishWith(t, manifest.PublishOptions{Version: "1.0", Expires: 24 * time.Hour}, v1Files)
	before := r.sameKeyRepo(t)
	copyDir(t, r.dir, before.dir) // the repository as it was before the resign
	cs := counting(source.NewFile(r.dir))
	dp := &reportingSource{Source: cs}
	cfg := testConfig(t, r.trust, dp)
	if res := mustUpdate(t, cfg); res.Status != StatusUpdated || res.Serial != 1 {
		t.Fatalf("first update = %+v, want updated at serial 1", res)
	}
	blobs := cs.blobRequests()

	l := r.resign(t)
	for run := range 2 {
		res := mustUpdate(t, cfg)
		if res.Status != StatusUpToDate || res.Version != "1.0" || res.Serial != l.Serial ||
			res.BytesDownloaded != 0 || res.FilesChanged != 0 {
			t.Errorf("run %d after resign = %+v, want up-to-date at 1.0 serial %d, nothing moved", run, res, l.Serial)
		}
		if st := dp.last(t); st.Result != StatusUpToDate || st.Serial != l.Serial {
			t.Errorf("run %d reported %+v, want up-to-date at serial %d", run, st, l.Serial)
		}
	}
	if n := cs.blobRequests(); n != blobs {
		t.Errorf("%d blob requests after the resign, want none", n-blobs)
	}
	if names := versionDirs(t, cfg); len(names) != 1 || names[0] != "1.0" {
		t.Errorf("version directories = %v, want [1.0]: nothing reinstalled", names)
	}
	if m, err := Installed(cfg.Dir, product); err != nil || m.Serial != 1 {
		t.Errorf("Installed = %+v, %v; want the manifest as published, serial 1", m, err)
	}
	assertTree(t, current(t, cfg), v1Files)

	// A source still offering the latest.json from before the resign.
	cfg.Sources = []source.Source{source.NewFile(before.dir)}
	if res := mustUpdate(t, cfg); res.Status != StatusUpToDate || res.Serial != 1 {
		t.Errorf("update from the pre-resign latest = %+v, want up-to-date at serial 1", res)
	}
}

// TestUpdate_ResignedAfterExpiry: a version whose latest.json expired is
// stale; once the vendor re-signs it, the same installation is up to date
// again, with nothing installed.
func TestUpdate_ResignedAfterExpiry(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	r.publishExpired(t, "1.0", v1Files)
	cfg := testConfig(t, r.trust, source.NewFile(r.dir))
	if res := mustUpdate(t, cfg); res.Status != StatusStale || res.Version != "1.0" {
		t.Fatalf("update of an expired version = %+v, want stale, installed", res)
	}
	if res := mustUpdate(t, cfg); res.Status != StatusStale {
		t.Fatalf("second update = %+v, want stale", res)
	}
	l := r.resign(t)
	res := mustUpdate(t, cfg)
	if res.Status != StatusUpToDate || res.Serial != l.Serial || res.FilesChanged != 0 || res.BytesDownloaded != 0 {
		t.Errorf("update after resign = %+v, want up-to-date at serial %d, nothing moved", res, l.Serial)
	}
	if names := versionDirs(t, cfg); len(names) != 1 {
		t.Errorf("version directories = %v, want one", names)
	}
}

// TestUpdate_FirstInstallFromResigned: an endpoint that never installed
// the product installs it from a re-signed latest.json (its manifest's
// serial is lower), then is up to date.
func TestUpdate_FirstInstallFromResigned(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	r.publish(t, "1.0", 0, v1Files)
	l := r.resign(t)
	cfg := testConfig(t, r.trust, source.NewFile(r.dir))
	if res := mustUpdate(t, cfg); res.Status != StatusUpdated || res.Serial != l.Serial {
		t.Fatalf("first update = %+v, want updated at serial %d", res, l.Serial)
	}
	assertTree(t, current(t, cfg), v1Files)
	if res := mustUpdate(t, cfg); res.Status != StatusUpToDate || res.Serial != l.Serial {
		t.Errorf("second update = %+v, want up-to-date at serial %d", res, l.Serial)
	}
}

// TestMirror_Resigned: mirroring a re-signed version copies the new
// latest.json alone: no blob fetched, the manifest left as it was; a
// second run is no "lower serial" and writes nothing; the folder then
// serves it fresh.
func TestMirror_Resigned(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	r.publishExpired(t, "1.0", v1Files)
	to := t.TempDir()
	cs := counting(source.NewFile(r.dir))
	if _, err := Mirror(testCtx(t), mirrorConfig(t, r, to, cs)); err != nil {
		t.Fatal(err)
	}
	blobs := cs.blobRequests()
	mpath := filepath.Join(to, filepath.FromSlash(manifest.ManifestPath(product, "1.0")))
	fi, err := os.Stat(mpath)
	if err != nil {
		t.Fatal(err)
	}

	l := r.resign(t)
	for run := range 2 {
		res, err := Mirror(testCtx(t), mirrorConfig(t, r, to, cs))
		if err != nil {
			t.Fatalf("mirror run %d after resign: %v", run, err)
		}
		// The first run writes the new latest.json; the second finds
		// nothing new and rewrites nothing.
		if res.Serial != l.Serial || res.LatestUpdated != (run == 0) || res.BlobsCopied != 0 || res.BytesDownloaded != 0 {
			t.Errorf("mirror run %d after resign = %+v, want latest serial %d (written by the first run only), no blob", run, res, l.Serial)
		}
	}
	if n := cs.blobRequests(); n != blobs {
		t.Errorf("%d blob requests after the resign, want none", n-blobs)
	}
	if fi2, err := os.Stat(mpath); err != nil || !os.SameFile(fi, fi2) {
		t.Errorf("the mirrored manifest was rewritten (%v)", err)
	}
	got, err := os.ReadFile(filepath.Join(to, filepath.FromSlash(manifest.LatestPath(product))))
	if err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(filepath.Join(r.dir, filepath.FromSlash(manifest.LatestPath(product))))
	if string(got) != string(want) {
		t.Errorf("mirrored latest.json differs from the source's")
	}
	cfg := testConfig(t, r.trust, source.NewFile(to))
	if res := mustUpdate(t, cfg); res.Status != StatusUpdated || res.Serial != l.Serial {
		t.Errorf("update from the mirror = %+v, want updated (fresh) at serial %d", res, l.Serial)
	}
}
