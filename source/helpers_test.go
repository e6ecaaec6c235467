package source_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/node"
	"github.com/dpcache/dpcache/source"
)

// testCtx returns a context that ends with the test, and at the latest after
// a minute, so that no test waits forever on a broken source.
func testCtx(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// repo is a repository folder published with manifest.Publish.
type repo struct {
	root    string
	key     manifest.PrivateKey
	trust   *manifest.Trust
	product string
	version string
	// blobs maps each digest of the version to its content.
	blobs map[string][]byte
	// digests lists the blobs' digests, smallest blob first.
	digests []string
	// unsigned is a product published the same way whose .minisig files
	// were then deleted.
	unsigned        string
	unsignedVersion string
}

// repoFiles is the content of the published version: an empty file, one
// byte, an odd size below a page, and a blob that spans several gRPC chunks
// (a DP streams 256 KiB messages) and ends off any power of two.
var repoFiles = map[string]int{
	"bases/empty.dat":   0,
	"bases/one.dat":     1,
	"bases/small.dat":   4099,
	"modules/big.bin":   1<<20 + 12345,
	"modules/other.bin": 70001,
}

func newRepo(t testing.TB) *repo {
	t.Helper()
	key, pub, err := manifest.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	trust, err := manifest.NewTrust(pub)
	if err != nil {
		t.Fatal(err)
	}
	r := &repo{
		root: filepath.Join(t.TempDir(), "repo"), key: key, trust: trust,
		product: "kes", version: "12.1.0.1",
		unsigned: "unsigned-product", unsignedVersion: "1.0",
		blobs: map[string][]byte{},
	}
	for _, content := range r.publish(t, r.product, r.version, 1, repoFiles) {
		d := manifest.SHA256Hex(content)
		if _, ok := r.blobs[d]; !ok {
			r.blobs[d] = content
			r.digests = append(r.digests, d)
		}
	}
	sort.Slice(r.digests, func(i, j int) bool {
		return len(r.blobs[r.digests[i]]) < len(r.blobs[r.digests[j]])
	})
	r.publish(t, r.unsigned, r.unsignedVersion, 2, map[string]int{"bases/u.dat": 1000})
	for _, p := range []string{
		manifest.SigPath(manifest.LatestPath(r.unsigned)),
		manifest.SigPath(manifest.ManifestPath(r.unsigned, r.unsignedVersion)),
	} {
		if err := os.Remove(r.file(p)); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

// publish writes files of the given sizes with pseudo-random content and
// publishes them; it returns each file's content by path.
func (r *repo) publish(t testing.TB, product, version string, seed uint64, files map[string]int) map[string][]byte {
	t.Helper()
	src := t.TempDir()
	rng := rand.New(rand.NewPCG(seed, 7))
	out := map[string][]byte{}
	for name, size := range files {
		b := make([]byte, size)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		p := filepath.Join(src, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		out[name] = b
	}
	_, err := manifest.Publish(manifest.PublishOptions{Repo: r.root, Product: product, Version: version, Key: r.key}, src)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// file returns the path of a repository file named by its slash path.
func (r *repo) file(rel string) string { return filepath.Join(r.root, filepath.FromSlash(rel)) }

// read returns a repository file's bytes.
func (r *repo) read(t testing.TB, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(r.file(rel))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// big returns the digest and content of the largest blob.
func (r *repo) big() (string, []byte) {
	d := r.digests[len(r.digests)-1]
	return d, r.blobs[d]
}

// missingDigest is a valid digest that no repository here holds.
var missingDigest = func() string {
	s := sha256.Sum256([]byte("a blob nobody published"))
	return hex.EncodeToString(s[:])
}()

// startDP runs a real distribution point on 127.0.0.1 whose upstream is the
// given source URL, until the test's cleanup, which waits for Run to return.
func startDP(t testing.TB, trust *manifest.Trust, upstream string) *node.Node {
	t.Helper()
	cfg := node.DefaultConfig()
	cfg.Name = "dp-source-test"
	cfg.DataDir = t.TempDir()
	cfg.GRPCAddr, cfg.HTTPAddr, cfg.GossipAddr = "127.0.0.1:0", "127.0.0.1:0", ""
	cfg.Upstream = []string{upstream}
	cfg.Trust = trust
	cfg.SourceOptions = source.Options{Timeout: 5 * time.Second}
	cfg.Logger = slog.New(slog.NewTextHandler(logWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	n, err := node.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("node.Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("node.Run did not return 30 s after its context was cancelled")
		}
	})
	return n
}

// logWriter sends a component's log lines to the test log.
type logWriter struct{ t testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// parse is source.Parse that fails the test on error and closes the source
// at cleanup.
func parse(t testing.TB, raw string, opts source.Options) source.Source {
	t.Helper()
	src, err := source.Parse(raw, opts)
	if err != nil {
		t.Fatalf("Parse(%q): %v", raw, err)
	}
	t.Cleanup(func() {
		if err := src.Close(); err != nil {
			t.Errorf("%s: Close: %v", src, err)
		}
	})
	return src
}

// testLogger returns a logger writing records at level and above to the
// test log.
func testLogger(t testing.TB, level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(logWriter{t}, &slog.HandlerOptions{Level: level}))
}
