package source_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/source"
	"github.com/dpcache/dpcache/source/failover"
)

// publishExample publishes one file as product "kes" version "1.0" into a
// new repository folder and returns the folder, the trusted keys and the
// blob's digest.
func publishExample() (string, *manifest.Trust, string) {
	dir, err := os.MkdirTemp("", "source-example")
	if err != nil {
		log.Fatal(err)
	}
	src := filepath.Join(dir, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "av.db"), []byte("signatures"), 0o644); err != nil {
		log.Fatal(err)
	}
	key, pub, err := manifest.GenerateKey()
	if err != nil {
		log.Fatal(err)
	}
	trust, err := manifest.NewTrust(pub)
	if err != nil {
		log.Fatal(err)
	}
	res, err := manifest.Publish(manifest.PublishOptions{Repo: filepath.Join(dir, "repo"), Product: "kes", Version: "1.0", Key: key}, src)
	if err != nil {
		log.Fatal(err)
	}
	return filepath.Join(dir, "repo"), trust, res.Manifest.Files[0].SHA256
}

// Parse a source URL and read a repository's latest version from it.
func ExampleParse() {
	repo, trust, _ := publishExample()
	defer os.RemoveAll(filepath.Dir(repo))

	src, err := source.Parse("file://"+repo, source.DefaultOptions())
	if err != nil {
		log.Fatal(err)
	}
	defer src.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	signed, err := src.Latest(ctx, "kes")
	if err != nil {
		log.Fatal(err)
	}
	latest, err := trust.VerifyLatest(signed.Data, signed.Signature)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(latest.Product, latest.Version, latest.Serial)
	// Output: kes 1.0 1
}

// A failover.Chain of sources in the administrator's order: the first one is down,
// the second serves; documents are verified before the chain accepts
// them, and the result names the source that served.
func Example_failover() {
	repo, trust, digest := publishExample()
	defer os.RemoveAll(filepath.Dir(repo))

	srcs, err := source.ParseList([]string{"http://127.0.0.1:1/updates/", repo}, source.Options{Timeout: 5 * time.Second})
	if err != nil {
		log.Fatal(err)
	}
	chain := failover.New(srcs, failover.Options{
		ConnectTimeout: 5 * time.Second,
		Verify: func(kind, product, version string, s source.Signed) error {
			return trust.Verify(s.Data, s.Signature)
		},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	defer chain.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	signed, err := chain.Latest(ctx, "kes")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("latest from the folder:", strings.HasSuffix(signed.Source, "/repo"))

	rc, err := chain.Blob(ctx, digest, 0) // hashed and checked at the end
	if err != nil {
		log.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s\n", b)
	// Output:
	// latest from the folder: true
	// signatures
}
