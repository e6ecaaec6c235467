package manifest

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestResign: Resign writes a latest.json for the same version and manifest
// under the next serial, with a new expiry and the version's publication
// time; the manifest, its signature and the blobs stay byte for byte; a
// client verifies the pair; a later Publish continues from the new serial.
func TestResign(t *testing.T) {
	t.Parallel()
	k, tr := newKey(t)
	repo := t.TempDir()
	published := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	src := writeTree(t, map[string]string{"db/a": "content a", "modules/m": "module"})
	pub, err := Publish(PublishOptions{Repo: repo, Product: "p", Version: "1.0", Key: k, Expires: time.Hour,
		Now: func() time.Time { return published }}, src)
	if err != nil {
		t.Fatal(err)
	}
	mdata, msig := readRepo(t, repo, ManifestPath("p", "1.0"))
	blobs, _ := os.ReadDir(filepath.Join(repo, filepath.FromSlash(BlobDir)))

	now := time.Date(2026, 11, 30, 8, 0, 0, 500, time.UTC)
	res, err := Resign(ResignOptions{Repo: repo, Product: "p", Key: k, Expires: 168 * time.Hour, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	l := res.Latest
	wantExp := time.Date(2026, 12, 7, 8, 0, 0, 0, time.UTC)
	if l.Serial != pub.Latest.Serial+1 || l.Version != "1.0" || l.ManifestSHA256 != pub.Latest.ManifestSHA256 ||
		!l.Published.Equal(published) || l.Expires == nil || !l.Expires.Equal(wantExp) {
		t.Errorf("resigned latest = %+v, want serial %d, same version, manifest and published, expires %s", l, pub.Latest.Serial+1, wantExp)
	}
	if res.Previous.Serial != pub.Latest.Serial {
		t.Errorf("Previous = %+v, want the published latest", res.Previous)
	}
	if m := checkRepo(t, tr, repo, "p"); m.Serial != pub.Manifest.Serial {
		t.Errorf("manifest serial %d, want %d (unchanged)", m.Serial, pub.Manifest.Serial)
	}
	ld, _ := readRepo(t, repo, LatestPath("p"))
	if got, err := ParseLatest(ld); err != nil || got.Serial != l.Serial || got.Fresh(now) != nil {
		t.Errorf("latest.json on disk = %+v, %v; want serial %d, fresh", got, err, l.Serial)
	}
	md, ms := readRepo(t, repo, ManifestPath("p", "1.0"))
	if !bytes.Equal(md, mdata) || !bytes.Equal(ms, msig) {
		t.Error("the manifest or its signature changed")
	}
	if after, _ := os.ReadDir(filepath.Join(repo, filepath.FromSlash(BlobDir))); len(after) != len(blobs) {
		t.Errorf("%d blobs after resign, want %d", len(after), len(blobs))
	}

	// Without an expiry the version never expires; serials keep growing.
	res, err = Resign(ResignOptions{Repo: repo, Product: "p", Key: k})
	if err != nil || res.Latest.Serial != pub.Latest.Serial+2 || res.Latest.Expires != nil {
		t.Fatalf("second Resign = %+v, %v; want serial %d, no expiry", res, err, pub.Latest.Serial+2)
	}
	pub2, err := Publish(PublishOptions{Repo: repo, Product: "p", Version: "2.0", Key: k}, src)
	if err != nil || pub2.Latest.Serial != pub.Latest.Serial+3 {
		t.Fatalf("Publish after Resign = %v, serial %d; want %d", err, pub2.Latest.Serial, pub.Latest.Serial+3)
	}
	checkRepo(t, tr, repo, "p")
}

// TestResign_Refuses: nothing to resign, a broken latest.json or manifest,
// bad options; nothing is written.
func TestResign_Refuses(t *testing.T) {
	t.Parallel()
	k, _ := newKey(t)
	src := writeTree(t, map[string]string{"a": "x"})
	// published returns a repository with product p published at 1.0.
	published := func(t *testing.T) string {
		repo := t.TempDir()
		if _, err := Publish(PublishOptions{Repo: repo, Product: "p", Version: "1.0", Key: k}, src); err != nil {
			t.Fatal(err)
		}
		return repo
	}
	file := func(repo, p string) string { return filepath.Join(repo, filepath.FromSlash(p)) }
	write := func(t *testing.T, path, data string) {
		if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name  string
		opts  ResignOptions
		setup func(t *testing.T, repo string)
		want  error
	}{
		{"not published", ResignOptions{Product: "q", Key: k}, nil, ErrNotPublished},
		{"corrupt latest", ResignOptions{Product: "p", Key: k}, func(t *testing.T, repo string) {
			write(t, file(repo, LatestPath("p")), "garbage")
		}, ErrInvalid},
		{"manifest missing", ResignOptions{Product: "p", Key: k}, func(t *testing.T, repo string) {
			if err := os.Remove(file(repo, ManifestPath("p", "1.0"))); err != nil {
				t.Fatal(err)
			}
		}, ErrMismatch},
		{"manifest changed", ResignOptions{Product: "p", Key: k}, func(t *testing.T, repo string) {
			data, _ := os.ReadFile(file(repo, ManifestPath("p", "1.0")))
			write(t, file(repo, ManifestPath("p", "1.0")), string(data)+" ")
		}, ErrMismatch},
		{"manifest unsigned", ResignOptions{Product: "p", Key: k}, func(t *testing.T, repo string) {
			if err := os.Remove(file(repo, SigPath(ManifestPath("p", "1.0")))); err != nil {
				t.Fatal(err)
			}
		}, ErrMissingSignature},
		{"no key", ResignOptions{Product: "p"}, nil, ErrBadKey},
		{"bad product", ResignOptions{Product: "../p", Key: k}, nil, ErrInvalid},
		{"negative expiry", ResignOptions{Product: "p", Key: k, Expires: -time.Hour}, nil, ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			repo := published(t)
			if tt.setup != nil {
				tt.setup(t, repo)
			}
			before, _ := os.ReadFile(file(repo, LatestPath("p")))
			beforeSig, _ := os.ReadFile(file(repo, SigPath(LatestPath("p"))))
			tt.opts.Repo = repo
			if _, err := Resign(tt.opts); !errors.Is(err, tt.want) {
				t.Fatalf("Resign = %v, want %v", err, tt.want)
			}
			after, _ := os.ReadFile(file(repo, LatestPath("p")))
			afterSig, _ := os.ReadFile(file(repo, SigPath(LatestPath("p"))))
			if !bytes.Equal(before, after) || !bytes.Equal(beforeSig, afterSig) {
				t.Error("latest.json or its signature was written")
			}
		})
	}
	if _, err := Resign(ResignOptions{Product: "p", Key: k}); !errors.Is(err, ErrInvalid) {
		t.Errorf("Resign without a repository = %v, want ErrInvalid", err)
	}
}
