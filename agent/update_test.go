package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/source"
	"github.com/dpcache/dpcache/source/failover"
)

var v1Files = map[string]string{
	"db/a.bin":      "database A version 1",
	"db/b.bin":      strings.Repeat("B", 5000),
	"db/sub/c.bin":  "database C",
	"modules/m.dll": strings.Repeat("module", 1000),
}

func TestUpdate_Install(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	r.publish(t, "1.0", 0, v1Files)
	src := counting(source.NewFile(r.dir))
	cfg := testConfig(t, r.trust, src)

	res := mustUpdate(t, cfg)
	var size int64
	for _, c := range v1Files {
		size += int64(len(c))
	}
	want := Result{Product: product, Version: "1.0", Serial: 1, Status: StatusUpdated,
		Source: src.String(), BytesDownloaded: size, FilesChanged: len(v1Files)}
	if *res != want {
		t.Errorf("result = %+v, want %+v", *res, want)
	}
	assertTree(t, current(t, cfg), v1Files)
	// The JSON form is docs/design.md's `update --json` object.
	var fields map[string]any
	b, _ := json.Marshal(res)
	json.Unmarshal(b, &fields)
	if got := strings.Join(slices.Sorted(maps.Keys(fields)), ","); got != "bytes_downloaded,files_changed,product,serial,source,status,version" {
		t.Errorf("JSON fields = %s", got)
	}
	m, err := Installed(cfg.Dir, product)
	if err != nil {
		t.Fatal(err)
	}
	if m.Version != "1.0" || m.Serial != 1 || len(m.Files) != len(v1Files) {
		t.Errorf("Installed = %s serial %d, %d files", m.Version, m.Serial, len(m.Files))
	}
	// The state keeps the signed documents verbatim.
	vdir := filepath.Join(cfg.Dir, product, stateDirName, versionsDirName, "1.0")
	for _, name := range []string{manifest.ManifestName, manifestSigName, manifest.LatestName, latestSigName} {
		got, err := os.ReadFile(filepath.Join(vdir, name))
		if err != nil {
			t.Fatal(err)
		}
		rel := manifest.LatestPath(product)
		if strings.HasPrefix(name, "manifest") {
			rel = manifest.ManifestPath(product, "1.0")
		}
		if strings.HasSuffix(name, manifest.SigSuffix) {
			rel = manifest.SigPath(rel)
		}
		want, _ := os.ReadFile(filepath.Join(r.dir, filepath.FromSlash(rel)))
		if string(got) != string(want) {
			t.Errorf("%s differs from the repository's", name)
		}
	}
	// No leftovers: staging and downloads are empty.
	for _, d := range []string{stagingDirName, blobsDirName} {
		if ents, _ := os.ReadDir(filepath.Join(cfg.Dir, product, stateDirName, d)); len(ents) != 0 {
			t.Errorf("%s not empty after the run: %v", d, ents)
		}
	}
	if _, err := os.Lstat(filepath.Join(cfg.Dir, product, previousName)); !os.IsNotExist(err) {
		t.Errorf("previous exists after a first install: %v", err)
	}

	// Second run: nothing to do.
	res = mustUpdate(t, cfg)
	if res.Status != StatusUpToDate || res.BytesDownloaded != 0 || res.FilesChanged != 0 || res.Version != "1.0" {
		t.Errorf("second run = %+v, want up-to-date with nothing downloaded", *res)
	}
}

func TestUpdate_OnlyChangedFilesDownloaded(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	r.publish(t, "1.0", 0, v1Files)
	h := serveRepo(t, r.dir, nil)
	cfg := testConfig(t, r.trust, h.src)
	mustUpdate(t, cfg)

	v2 := map[string]string{
		"db/a.bin":      "database A version 2", // changed
		"db/b.bin":      v1Files["db/b.bin"],
		"db/new.bin":    "a new database", // added
		"modules/m.dll": v1Files["modules/m.dll"],
		"db/copy.bin":   v1Files["db/b.bin"], // same content, new path: no download
		// db/sub/c.bin removed
	}
	r.publish(t, "2.0", 0, v2)
	before := h.sent.Load()
	res := mustUpdate(t, cfg)
	wantBytes := int64(len(v2["db/a.bin"]) + len(v2["db/new.bin"]))
	if res.BytesDownloaded != wantBytes || h.sent.Load()-before != wantBytes {
		t.Errorf("downloaded %d bytes (server sent %d), want %d", res.BytesDownloaded, h.sent.Load()-before, wantBytes)
	}
	if res.Status != StatusUpdated || res.Version != "2.0" || res.Serial != 2 || res.FilesChanged != 4 {
		t.Errorf("result = %+v", *res)
	}
	assertTree(t, current(t, cfg), v2)
	assertTree(t, readTree(t, filepath.Join(cfg.Dir, product, previousName)+"/"), v1Files)

	// Unchanged files are hard links to the previous version's.
	cur, _ := os.Stat(filepath.Join(cfg.Dir, product, currentName, "db", "b.bin"))
	prev, _ := os.Stat(filepath.Join(cfg.Dir, product, previousName, "db", "b.bin"))
	if !os.SameFile(cur, prev) {
		t.Error("unchanged db/b.bin is not shared with the previous version")
	}

	// A third version: the oldest is removed, exactly one previous kept.
	r.publish(t, "3.0", 0, map[string]string{"db/a.bin": "three"})
	mustUpdate(t, cfg)
	ents, _ := os.ReadDir(filepath.Join(cfg.Dir, product, stateDirName, versionsDirName))
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if strings.Join(names, ",") != "2.0,3.0" {
		t.Errorf("versions on disk = %v, want [2.0 3.0]", names)
	}
}

func TestUpdate_LowerSerialRefused(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	r.publish(t, "1.0", 0, v1Files)
	stale := r.sameKeyRepo(t)
	copyDir(t, r.dir, stale.dir) // a mirror that stopped at 1.0
	r.publish(t, "2.0", 0, map[string]string{"db/a.bin": "two"})

	cfg := testConfig(t, r.trust, source.NewFile(r.dir))
	mustUpdate(t, cfg)

	// The stale source alone: refused, nothing changes.
	cfg.Sources = []source.Source{source.NewFile(stale.dir)}
	_, err := Update(testCtx(t), cfg)
	if !errors.Is(err, ErrLowerSerial) || !errors.Is(err, ErrSourcesFailed) {
		t.Fatalf("err = %v, want ErrLowerSerial", err)
	}
	if !strings.Contains(err.Error(), stale.dir) || !strings.Contains(err.Error(), "serial 1") {
		t.Errorf("error does not name the source and serials: %v", err)
	}
	assertTree(t, current(t, cfg), map[string]string{"db/a.bin": "two"})

	// Stale first, current second: the second answers.
	cfg.Sources = []source.Source{source.NewFile(stale.dir), source.NewFile(r.dir)}
	res := mustUpdate(t, cfg)
	if res.Status != StatusUpToDate || res.Source != cfg.Sources[1].String() {
		t.Errorf("result = %+v, want up-to-date from the second source", *res)
	}
}

func TestUpdate_SameSerialOtherVersionRefused(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	r.publish(t, "1.0", 0, v1Files)
	other := r.sameKeyRepo(t)
	other.publish(t, "1.0-evil", 1, map[string]string{"db/a.bin": "evil"})

	cfg := testConfig(t, r.trust, source.NewFile(r.dir))
	mustUpdate(t, cfg)
	cfg.Sources = []source.Source{source.NewFile(other.dir)}
	_, err := Update(testCtx(t), cfg)
	if !errors.Is(err, ErrSerialConflict) {
		t.Fatalf("err = %v, want ErrSerialConflict", err)
	}
	assertTree(t, current(t, cfg), v1Files)
}

func TestUpdate_BadDocuments(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		mangle  func(t *testing.T, r *repo)
		trust   func(t *testing.T, r *repo) *manifest.Trust
		wantErr error
	}{
		{
			name: "unknown key",
			trust: func(t *testing.T, r *repo) *manifest.Trust {
				return newRepo(t).trust
			},
			wantErr: manifest.ErrUntrustedKey,
		},
		{
			name: "missing latest signature",
			mangle: func(t *testing.T, r *repo) {
				rm(t, filepath.Join(r.dir, filepath.FromSlash(manifest.SigPath(manifest.LatestPath(product)))))
			},
			wantErr: manifest.ErrMissingSignature,
		},
		{
			name: "missing manifest signature",
			mangle: func(t *testing.T, r *repo) {
				rm(t, filepath.Join(r.dir, filepath.FromSlash(manifest.SigPath(manifest.ManifestPath(product, "1.0")))))
			},
			wantErr: manifest.ErrMissingSignature,
		},
		{
			name: "tampered latest",
			mangle: func(t *testing.T, r *repo) {
				p := filepath.Join(r.dir, filepath.FromSlash(manifest.LatestPath(product)))
				b, _ := os.ReadFile(p)
				os.WriteFile(p, []byte(strings.Replace(string(b), `"serial": 1`, `"serial": 9`, 1)), 0o644)
			},
			wantErr: manifest.ErrBadSignature,
		},
		{
			name: "manifest swapped for another signed one",
			mangle: func(t *testing.T, r *repo) {
				other := r.sameKeyRepo(t)
				other.publish(t, "1.0", 1, map[string]string{"db/a.bin": "other"})
				for _, rel := range []string{manifest.ManifestPath(product, "1.0"), manifest.SigPath(manifest.ManifestPath(product, "1.0"))} {
					b, _ := os.ReadFile(filepath.Join(other.dir, filepath.FromSlash(rel)))
					os.WriteFile(filepath.Join(r.dir, filepath.FromSlash(rel)), b, 0o644)
				}
			},
			wantErr: manifest.ErrMismatch,
		},
		{
			name: "latest.json of another product",
			mangle: func(t *testing.T, r *repo) {
				other := &manifest.Manifest{Product: "other", Version: "1.0", Serial: 7, Published: fixedTime}
				mdata, _ := json.Marshal(other)
				ldata, _ := json.Marshal(manifest.NewLatest(other, mdata))
				r.writeSigned(t, manifest.LatestPath(product), ldata)
			},
			wantErr: ErrWrongProduct,
		},
		{
			name: "product missing",
			mangle: func(t *testing.T, r *repo) {
				rm(t, filepath.Join(r.dir, product))
			},
			wantErr: source.ErrNotFound,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := newRepo(t)
			r.publish(t, "1.0", 0, v1Files)
			if tt.mangle != nil {
				tt.mangle(t, r)
			}
			trust := r.trust
			if tt.trust != nil {
				trust = tt.trust(t, r)
			}
			src := source.NewFile(r.dir)
			cfg := testConfig(t, trust, src)
			_, err := Update(testCtx(t), cfg)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), src.String()) {
				t.Errorf("error does not name the source: %v", err)
			}
			if _, err := Installed(cfg.Dir, product); !errors.Is(err, ErrNotInstalled) {
				t.Errorf("Installed after a refused update: %v", err)
			}
		})
	}
}

func TestUpdate_CorruptBlobNextSourceServes(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	r.publish(t, "1.0", 0, v1Files)
	bad := serveRepo(t, r.dir, func(int, *http.Request) fault { return fault{corrupt: true} })
	good := serveRepo(t, r.dir, nil)
	var logs strings.Builder
	cfg := testConfig(t, r.trust, bad.src, good.src)
	cfg.Logger = newTestLogger(&logs)
	cfg.Concurrency = 1

	res := mustUpdate(t, cfg)
	if res.Source != good.src.String() {
		t.Errorf("result source = %q, want %q", res.Source, good.src.String())
	}
	assertTree(t, current(t, cfg), v1Files)
	if !strings.Contains(logs.String(), "update source delivered a corrupt blob") || !strings.Contains(logs.String(), "skipped=1") {
		t.Errorf("log does not tell about the corrupt source:\n%s", logs.String())
	}
	// Sticky failover: after the first corrupt file, the good source
	// serves the rest.
	if n := len(bad.ranges()); n != 1 {
		t.Errorf("corrupt source asked for %d blobs, want 1", n)
	}
}

func TestUpdate_EverySourceCorrupt(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	r.publish(t, "1.0", 0, v1Files)
	cfg := testConfig(t, r.trust, source.NewFile(r.dir))
	mustUpdate(t, cfg)
	r.publish(t, "2.0", 0, map[string]string{"db/a.bin": "version two of A"})

	bad1 := serveRepo(t, r.dir, func(int, *http.Request) fault { return fault{corrupt: true} })
	bad2 := serveRepo(t, r.dir, func(int, *http.Request) fault { return fault{corrupt: true} })
	cfg.Sources = []source.Source{bad1.src, bad2.src}
	_, err := Update(testCtx(t), cfg)
	var fe *failover.Error
	if !errors.As(err, &fe) || !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("err = %v, want a *failover.Error with ErrDigestMismatch", err)
	}
	msg := err.Error()
	for _, want := range []string{bad1.src.String(), bad2.src.String(), `"db/a.bin"`, sha("version two of A"), "source content is corrupt"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q: %s", want, msg)
		}
	}
	if len(fe.Failures) != 2 {
		t.Errorf("%d failures listed, want 2", len(fe.Failures))
	}
	assertTree(t, current(t, cfg), v1Files)
	// The corrupt bytes are not kept.
	if _, err := os.Stat(filepath.Join(cfg.Dir, product, stateDirName, blobsDirName, sha("version two of A")+partSuffix)); err == nil {
		if b, _ := os.ReadFile(filepath.Join(cfg.Dir, product, stateDirName, blobsDirName, sha("version two of A")+partSuffix)); len(b) != 0 {
			t.Errorf("corrupt download kept: %d bytes", len(b))
		}
	}
}

func TestUpdate_UnreachableSourceSkipped(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	r.publish(t, "1.0", 0, v1Files)
	dead := closedSource(t)
	cfg := testConfig(t, r.trust, dead, source.NewFile(r.dir))
	res := mustUpdate(t, cfg)
	if res.Source != cfg.Sources[1].String() {
		t.Errorf("source = %q", res.Source)
	}

	cfg2 := testConfig(t, r.trust, dead)
	_, err := Update(testCtx(t), cfg2)
	if !errors.Is(err, source.ErrUnavailable) || !strings.Contains(err.Error(), dead.String()) {
		t.Errorf("err = %v, want ErrUnavailable naming %s", err, dead)
	}
}

func TestUpdate_UnsafeManifestPaths(t *testing.T) {
	t.Parallel()
	for _, bad := range []string{"../x", "/etc/x", "db/../../x", "a/./b", `..\x`} {
		t.Run(bad, func(t *testing.T) {
			t.Parallel()
			r := newRepo(t)
			content := "escaped"
			blob := r.blobFile(content)
			os.MkdirAll(filepath.Dir(blob), 0o755)
			os.WriteFile(blob, []byte(content), 0o644)
			m := &manifest.Manifest{Product: product, Version: "1.0", Serial: 1, Published: fixedTime,
				Files: []manifest.File{{Path: bad, Size: int64(len(content)), SHA256: sha(content), Component: manifest.ComponentDatabases}}}
			mdata, _ := json.Marshal(m)
			r.writeSigned(t, manifest.ManifestPath(product, "1.0"), mdata)
			ldata, _ := json.Marshal(manifest.NewLatest(m, mdata))
			r.writeSigned(t, manifest.LatestPath(product), ldata)

			parent := t.TempDir()
			cfg := testConfig(t, r.trust, source.NewFile(r.dir))
			cfg.Dir = filepath.Join(parent, "install")
			_, err := Update(testCtx(t), cfg)
			if err == nil {
				t.Fatal("update with an unsafe path succeeded")
			}
			if !errors.Is(err, manifest.ErrInvalid) && !errors.Is(err, ErrUnsafePath) {
				t.Errorf("err = %v, want invalid/unsafe path", err)
			}
			// Nothing anywhere but inside Dir.
			for p := range readTree(t, parent) {
				if !strings.HasPrefix(p, "install/") {
					t.Errorf("file written outside Dir: %s", p)
				}
			}
			if _, err := Installed(cfg.Dir, product); !errors.Is(err, ErrNotInstalled) {
				t.Errorf("Installed: %v", err)
			}
		})
	}
}

func TestUpdate_ResumeTruncatedStream(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	big := pseudoRandom(2 << 20)
	r.publish(t, "1.0", 0, map[string]string{"db/big.bin": big})
	const cut = 300 << 10
	// The first source cuts every response after 300 KiB; the agent resumes
	// from it while it makes progress, then the second source finishes.
	cutter := serveRepo(t, r.dir, func(int, *http.Request) fault { return fault{cutAfter: cut} })
	good := serveRepo(t, r.dir, nil)
	cfg := testConfig(t, r.trust, cutter.src, good.src)
	res := mustUpdate(t, cfg)
	assertTree(t, current(t, cfg), map[string]string{"db/big.bin": big})

	sent := cutter.sent.Load() + good.sent.Load()
	const slack = 64 << 10
	if sent > int64(len(big))+slack || res.BytesDownloaded > int64(len(big))+slack {
		t.Errorf("servers sent %d bytes, agent got %d, for a %d-byte file", sent, res.BytesDownloaded, len(big))
	}
	if got := cutter.ranges(); len(got) != 1+failover.MaxResumes || got[0] != "" || !strings.HasPrefix(got[1], "bytes=") {
		t.Errorf("cutting source got Range headers %q, want a first full request then %d resumes", got, failover.MaxResumes)
	}
	if got := good.ranges(); len(got) != 1 || got[0] != fmt.Sprintf("bytes=%d-", (1+failover.MaxResumes)*cut) {
		t.Errorf("second source got Range headers %q, want one resume at %d", got, (1+failover.MaxResumes)*cut)
	}
	if res.Source != good.src.String() {
		t.Errorf("source = %q, want %q", res.Source, good.src.String())
	}
}

func TestUpdate_ResumeAcrossRuns(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	big := pseudoRandom(1 << 20)
	r.publish(t, "1.0", 0, map[string]string{"db/big.bin": big})
	// Run 1: the only source cuts the stream, then fails.
	h := serveRepo(t, r.dir, func(req int, _ *http.Request) fault {
		if req == 0 {
			return fault{cutAfter: 400 << 10}
		}
		return fault{status: http.StatusServiceUnavailable}
	})
	cfg := testConfig(t, r.trust, h.src)
	_, err := Update(testCtx(t), cfg)
	if !errors.Is(err, source.ErrUnavailable) {
		t.Fatalf("err = %v, want ErrUnavailable", err)
	}
	if _, err := Installed(cfg.Dir, product); !errors.Is(err, ErrNotInstalled) {
		t.Fatalf("Installed after a failed first run: %v", err)
	}
	// Run 2: the source is back; the download continues at its offset.
	h.setFault(nil)
	before := h.sent.Load()
	res := mustUpdate(t, cfg)
	if got := h.sent.Load() - before; got != int64(len(big))-400<<10 || res.BytesDownloaded != got {
		t.Errorf("second run moved %d bytes (agent counted %d), want %d", got, res.BytesDownloaded, len(big)-400<<10)
	}
	assertTree(t, current(t, cfg), map[string]string{"db/big.bin": big})
}

func TestUpdate_CorruptAfterResumeRefetchedWhole(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	big := pseudoRandom(1 << 20)
	r.publish(t, "1.0", 0, map[string]string{"db/big.bin": big})
	// The first source cuts at 100 KiB, then serves corrupt bytes from the
	// offset: the resumed file fails its digest, and the second source
	// fetches it again from byte 0.
	bad := serveRepo(t, r.dir, func(req int, _ *http.Request) fault {
		if req == 0 {
			return fault{cutAfter: 100 << 10}
		}
		return fault{corrupt: true}
	})
	good := serveRepo(t, r.dir, nil)
	cfg := testConfig(t, r.trust, bad.src, good.src)
	res := mustUpdate(t, cfg)
	assertTree(t, current(t, cfg), map[string]string{"db/big.bin": big})
	if got := good.ranges(); len(got) != 1 || got[0] != "" {
		t.Errorf("second source got Range headers %q, want one whole request", got)
	}
	if res.Source != good.src.String() {
		t.Errorf("source = %q", res.Source)
	}
}

func TestUpdate_Components(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	r.publish(t, "1.0", 0, v1Files)
	src := counting(source.NewFile(r.dir))
	cfg := testConfig(t, r.trust, src)
	cfg.Components = []string{manifest.ComponentDatabases}
	mustUpdate(t, cfg)
	dbOnly := map[string]string{}
	for p, c := range v1Files {
		if !strings.HasPrefix(p, "modules/") {
			dbOnly[p] = c
		}
	}
	assertTree(t, current(t, cfg), dbOnly)
	m, _ := Installed(cfg.Dir, product)
	if len(m.Files) != len(dbOnly) {
		t.Errorf("Installed lists %d files, want %d", len(m.Files), len(dbOnly))
	}
	if res := mustUpdate(t, cfg); res.Status != StatusUpToDate {
		t.Errorf("same components again: %s", res.Status)
	}

	// Both components now: the same version is reinstalled with the
	// modules, downloading only them.
	cfg.Components = nil
	res := mustUpdate(t, cfg)
	if res.Status != StatusUpdated || res.Version != "1.0" || res.BytesDownloaded != int64(len(v1Files["modules/m.dll"])) || res.FilesChanged != 1 {
		t.Errorf("result = %+v", *res)
	}
	assertTree(t, current(t, cfg), v1Files)
	if res := mustUpdate(t, cfg); res.Status != StatusUpToDate {
		t.Errorf("after adding modules: %s", res.Status)
	}
}

func TestUpdate_RepairsDamagedCurrent(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	r.publish(t, "1.0", 0, v1Files)
	cfg := testConfig(t, r.trust, source.NewFile(r.dir))
	mustUpdate(t, cfg)
	rm(t, filepath.Join(cfg.Dir, product, currentName, "db", "a.bin"))
	res := mustUpdate(t, cfg)
	if res.Status != StatusUpdated || res.BytesDownloaded != int64(len(v1Files["db/a.bin"])) {
		t.Errorf("repair result = %+v", *res)
	}
	assertTree(t, current(t, cfg), v1Files)

	// A file modified in place (same size) is not reused by the next
	// version: its digest is checked.
	p := filepath.Join(cfg.Dir, product, currentName, "db", "b.bin")
	os.WriteFile(p, []byte(strings.Repeat("X", len(v1Files["db/b.bin"]))), 0o644)
	v2 := map[string]string{"db/a.bin": "two", "db/b.bin": v1Files["db/b.bin"]}
	r.publish(t, "2.0", 0, v2)
	res = mustUpdate(t, cfg)
	if res.BytesDownloaded != int64(len("two")+len(v1Files["db/b.bin"])) {
		t.Errorf("downloaded %d bytes: the modified file was reused", res.BytesDownloaded)
	}
	assertTree(t, current(t, cfg), v2)
}

func TestUpdate_DuplicateAndEmptyFiles(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	files := map[string]string{"a/one": "same", "b/two": "same", "empty": "", "modules/empty": ""}
	r.publish(t, "1.0", 0, files)
	src := counting(source.NewFile(r.dir))
	cfg := testConfig(t, r.trust, src)
	res := mustUpdate(t, cfg)
	assertTree(t, current(t, cfg), files)
	if res.BytesDownloaded != 4 || src.blobRequests() != 1 {
		t.Errorf("downloaded %d bytes in %d requests, want 4 in 1", res.BytesDownloaded, src.blobRequests())
	}
}

func TestUpdate_Progress(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	r.publish(t, "1.0", 0, map[string]string{"a": pseudoRandom(1 << 20), "b": pseudoRandom(3000)})
	cfg := testConfig(t, r.trust, source.NewFile(r.dir))
	var calls []([2]int64)
	cfg.Progress = func(done, total int64) { calls = append(calls, [2]int64{done, total}) }
	mustUpdate(t, cfg)
	if len(calls) < 2 {
		t.Fatalf("%d progress calls", len(calls))
	}
	last := calls[len(calls)-1]
	if last[0] != last[1] || last[1] != 1<<20+3000 {
		t.Errorf("last progress = %v, want done = total = %d", last, 1<<20+3000)
	}
	for i := 1; i < len(calls); i++ {
		if calls[i][0] < calls[i-1][0] {
			t.Fatalf("progress went back: %v then %v", calls[i-1], calls[i])
		}
	}
}

func TestUpdate_Busy(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	r.publish(t, "1.0", 0, v1Files)
	cfg := testConfig(t, r.trust, source.NewFile(r.dir))
	l := newLayout(cfg.Dir, product)
	if err := l.init(); err != nil {
		t.Fatal(err)
	}
	unlock, err := lockFile(l.lockPath())
	if err != nil {
		t.Fatal(err)
	}
	_, err = Update(testCtx(t), cfg)
	if !errors.Is(err, ErrBusy) {
		t.Errorf("err = %v, want ErrBusy", err)
	}
	if _, err := Rollback(cfg.Dir, product); !errors.Is(err, ErrBusy) {
		t.Errorf("rollback err = %v, want ErrBusy", err)
	}
	unlock()
	mustUpdate(t, cfg)
}

func TestUpdate_CurrentNotOurs(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	r.publish(t, "1.0", 0, v1Files)
	cfg := testConfig(t, r.trust, source.NewFile(r.dir))
	cur := filepath.Join(cfg.Dir, product, currentName)
	os.MkdirAll(cur, 0o755)
	os.WriteFile(filepath.Join(cur, "keep"), []byte("user data"), 0o644)
	_, err := Update(testCtx(t), cfg)
	if !errors.Is(err, ErrBrokenInstall) || !strings.Contains(err.Error(), "move it away") {
		t.Fatalf("err = %v, want ErrBrokenInstall", err)
	}
	assertTree(t, readTree(t, cur), map[string]string{"keep": "user data"})
}

func TestUpdate_Report(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	r.publish(t, "1.0", 0, v1Files)
	plain := source.NewFile(r.dir)
	dp := &reportingSource{Source: source.NewFile(r.dir)}
	cfg := testConfig(t, r.trust, plain, dp)
	cfg.EndpointID, cfg.Hostname, cfg.Site = "ep-1", "host-1", "paris"
	mustUpdate(t, cfg)
	st := dp.last(t)
	if st.ID != "ep-1" || st.Hostname != "host-1" || st.Site != "paris" || st.Product != product ||
		st.Version != "1.0" || st.Serial != 1 || st.Result != StatusUpdated || st.Reported.IsZero() {
		t.Errorf("report = %+v", st)
	}

	// A failed run is reported with what stays installed; a report error
	// does not fail the update.
	r.publish(t, "2.0", 0, map[string]string{"x": "y"})
	rm(t, filepath.Join(r.dir, filepath.FromSlash(manifest.BlobDir)))
	dp.err = errors.New("DP is busy")
	_, err := Update(testCtx(t), cfg)
	if !errors.Is(err, source.ErrNotFound) {
		t.Fatalf("err = %v", err)
	}
	st = dp.last(t)
	if st.Result != StatusFailed || st.Version != "1.0" || st.Error == "" {
		t.Errorf("failure report = %+v", st)
	}
}

func TestConfig_Validate(t *testing.T) {
	t.Parallel()
	trust := newRepo(t).trust
	good := func() Config {
		c := DefaultConfig()
		c.Sources = []source.Source{source.NewFile("/nonexistent")}
		c.Product, c.Dir, c.Trust = product, "/tmp/x", trust
		return c
	}
	tests := []struct {
		name   string
		modify func(*Config)
		ok     bool
	}{
		{"defaults", func(*Config) {}, true},
		{"no components means both", func(c *Config) { c.Components = nil }, true},
		{"modules only", func(c *Config) { c.Components = []string{"modules"} }, true},
		{"no source", func(c *Config) { c.Sources = nil }, false},
		{"nil source", func(c *Config) { c.Sources = []source.Source{nil} }, false},
		{"bad product", func(c *Config) { c.Product = "../etc" }, false},
		{"dot product", func(c *Config) { c.Product = ".." }, false},
		{"no dir", func(c *Config) { c.Dir = "" }, false},
		{"no trust", func(c *Config) { c.Trust = nil }, false},
		{"unknown component", func(c *Config) { c.Components = []string{"drivers"} }, false},
		{"duplicate component", func(c *Config) { c.Components = []string{"modules", "modules"} }, false},
		{"zero concurrency", func(c *Config) { c.Concurrency = 0 }, false},
		{"negative report timeout", func(c *Config) { c.ReportTimeout = -1 }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := good()
			tt.modify(&c)
			err := c.Validate()
			if (err == nil) != tt.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("error %v does not wrap ErrInvalidConfig", err)
			}
			if err != nil {
				if _, uerr := Update(testCtx(t), c); !errors.Is(uerr, ErrInvalidConfig) {
					t.Errorf("Update with a bad config: %v", uerr)
				}
			}
		})
	}
}
