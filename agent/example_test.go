package agent_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/dpcache/dpcache/agent"
	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/source"
)

// A vendor publishes a version into a repository folder; an endpoint
// updates from it, then finds itself up to date.
func ExampleUpdate() {
	tmp, err := os.MkdirTemp("", "dpcache-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(tmp)

	// The vendor's side: a key pair and a published version.
	keyName := filepath.Join(tmp, "vendor")
	if err := manifest.GenerateKeyFiles(keyName); err != nil {
		log.Fatal(err)
	}
	key, err := manifest.LoadPrivateKey(keyName + ".key")
	if err != nil {
		log.Fatal(err)
	}
	files := filepath.Join(tmp, "build")
	os.MkdirAll(filepath.Join(files, "db"), 0o755)
	os.WriteFile(filepath.Join(files, "db", "signatures.bin"), []byte("threat signatures"), 0o644)
	repo := filepath.Join(tmp, "repo")
	if _, err := manifest.Publish(manifest.PublishOptions{
		Repo: repo, Product: "acme-av", Version: "2025.01.02", Key: key,
	}, files); err != nil {
		log.Fatal(err)
	}

	// The endpoint's side.
	trust, err := manifest.LoadTrust(keyName + ".pub")
	if err != nil {
		log.Fatal(err)
	}
	cfg := agent.DefaultConfig()
	cfg.Sources = []source.Source{source.NewFile(repo)}
	cfg.Product = "acme-av"
	cfg.Dir = filepath.Join(tmp, "install")
	cfg.Trust = trust

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for range 2 {
		res, err := agent.Update(ctx, cfg)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s %s (serial %d): %d bytes, %d files changed\n",
			res.Status, res.Version, res.Serial, res.BytesDownloaded, res.FilesChanged)
	}
	b, _ := os.ReadFile(filepath.Join(cfg.Dir, "acme-av", "current", "db", "signatures.bin"))
	fmt.Println(string(b))
	// Output:
	// updated 2025.01.02 (serial 1): 17 bytes, 1 files changed
	// up-to-date 2025.01.02 (serial 1): 0 bytes, 0 files changed
	// threat signatures
}
