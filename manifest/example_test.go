package manifest_test

import (
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/dpcache/dpcache/manifest"
)

// Publish a folder into a repository, then read it back as a client does:
// verify latest.json, then the manifest it names.
func ExamplePublish() {
	tmp, err := os.MkdirTemp("", "manifest-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(tmp)

	// The vendor's key pair, as `dpcache keygen -o vendor` makes it.
	keyName := filepath.Join(tmp, "vendor")
	if err := manifest.GenerateKeyFiles(keyName); err != nil {
		log.Fatal(err)
	}
	key, err := manifest.LoadPrivateKey(keyName + ".key")
	if err != nil {
		log.Fatal(err)
	}

	// What to publish.
	src := filepath.Join(tmp, "src")
	for name, content := range map[string]string{
		"bases/daily.avc":    "signatures",
		"modules/engine.bin": "engine",
	} {
		p := filepath.Join(src, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			log.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			log.Fatal(err)
		}
	}

	repo := filepath.Join(tmp, "repo")
	res, err := manifest.Publish(manifest.PublishOptions{
		Repo:    repo,
		Product: "kes",
		Version: "12.1",
		Key:     key,
		Now:     func() time.Time { return time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC) },
	}, src)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("published %s %s serial %d: %d blobs written\n",
		res.Latest.Product, res.Latest.Version, res.Latest.Serial, res.BlobsWritten)

	// A client trusts the vendor's public key.
	trust, err := manifest.LoadTrust(keyName + ".pub")
	if err != nil {
		log.Fatal(err)
	}
	read := func(p string) []byte {
		b, err := os.ReadFile(filepath.Join(repo, filepath.FromSlash(p)))
		if err != nil {
			log.Fatal(err)
		}
		return b
	}
	lp := manifest.LatestPath("kes")
	latest, err := trust.VerifyLatest(read(lp), read(manifest.SigPath(lp)))
	if err != nil {
		log.Fatal(err)
	}
	mp := manifest.ManifestPath("kes", latest.Version)
	m, err := trust.VerifyManifest(read(mp), read(manifest.SigPath(mp)), latest)
	if err != nil {
		log.Fatal(err)
	}
	for _, f := range m.Files {
		fmt.Printf("%s %s %d bytes -> %s\n", f.Component, f.Path, f.Size, manifest.BlobPath(f.SHA256)[:20]+"...")
	}
	// Output:
	// published kes 12.1 serial 1: 2 blobs written
	// databases bases/daily.avc 10 bytes -> blobs/sha256/0316e18...
	// modules modules/engine.bin 6 bytes -> blobs/sha256/ed9f6f2...
}

// Publish the current version again before it expires: a new latest.json
// under the next serial, pinning the same manifest, which a client verifies
// as before.
func ExampleResign() {
	tmp, err := os.MkdirTemp("", "manifest-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	key, pub, err := manifest.GenerateKey()
	if err != nil {
		log.Fatal(err)
	}
	src := filepath.Join(tmp, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "daily.avc"), []byte("signatures"), 0o644); err != nil {
		log.Fatal(err)
	}
	repo := filepath.Join(tmp, "repo")
	day := time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC)
	if _, err := manifest.Publish(manifest.PublishOptions{Repo: repo, Product: "kes", Version: "12.1", Key: key,
		Expires: 24 * time.Hour, Now: func() time.Time { return day }}, src); err != nil {
		log.Fatal(err)
	}

	res, err := manifest.Resign(manifest.ResignOptions{Repo: repo, Product: "kes", Key: key,
		Expires: 24 * time.Hour, Now: func() time.Time { return day.Add(20 * time.Hour) }})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s serial %d -> %d, expires %s\n", res.Latest.Version, res.Previous.Serial, res.Latest.Serial,
		res.Latest.Expires.Format(time.RFC3339))

	trust, err := manifest.NewTrust(pub)
	if err != nil {
		log.Fatal(err)
	}
	read := func(p string) []byte {
		b, err := os.ReadFile(filepath.Join(repo, filepath.FromSlash(p)))
		if err != nil {
			log.Fatal(err)
		}
		return b
	}
	lp, mp := manifest.LatestPath("kes"), manifest.ManifestPath("kes", "12.1")
	latest, err := trust.VerifyLatest(read(lp), read(manifest.SigPath(lp)))
	if err != nil {
		log.Fatal(err)
	}
	m, err := trust.VerifyManifest(read(mp), read(manifest.SigPath(mp)), latest)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("manifest serial %d, published %s\n", m.Serial, latest.Published.Format(time.RFC3339))
	// Output:
	// 12.1 serial 1 -> 2, expires 2026-01-03T20:00:00Z
	// manifest serial 1, published 2026-01-02T00:00:00Z
}

// A digest that arrives from outside (a request, a message) is parsed
// once, at the edge; its String form is the repository's blob name.
func ExampleParseDigest() {
	d, err := manifest.ParseDigest("2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(manifest.BlobPath(d.String()))
	_, err = manifest.ParseDigest("2CF24DBA")
	fmt.Println(err)
	// Output:
	// blobs/sha256/2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824
	// digest "2CF24DBA": want 64 hex characters: invalid document
}

// A product or version name becomes a path element: "." and ".." are
// refused with the rest.
func ExampleValidName() {
	for _, name := range []string{"kes-db", "12.1.0", "..", "a/b"} {
		fmt.Println(name, manifest.ValidName(name) == nil)
	}
	// Output:
	// kes-db true
	// 12.1.0 true
	// .. false
	// a/b false
}
