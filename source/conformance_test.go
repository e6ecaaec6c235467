package source_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/dpcache/dpcache/e2e/testenv"
	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/source"
	"github.com/dpcache/dpcache/source/failover"
)

// TestConformance runs one suite against every Source implementation, each
// reading the same published repository: a folder (File), a real nginx and
// Go's http.FileServer (HTTP), nginx over HTTPS with a test CA, nginx and
// nginx over HTTPS through a real squid with basic auth (the proxy), a real
// vsftpd with a user and password (FTP), a real distribution point whose
// upstream is that nginx (GRPC), and a Chain whose first source lacks
// everything.
func TestConformance(t *testing.T) {
	r := newRepo(t)
	ca := testenv.NewTestCA(t)
	ngx := testenv.StartNginxTLS(t, r.root, ca, testenv.NginxOptions{Prefix: "/updates/"})
	fileServer := httptest.NewServer(http.FileServer(http.Dir(r.root)))
	t.Cleanup(fileServer.Close)
	dp := startDP(t, r.trust, ngx.URL)
	// vsftpd serves the repository's parent: the URL's path names it.
	ftpd := testenv.StartVsftpd(t, filepath.Dir(r.root), testenv.VsftpdOptions{
		User: testenv.UniqueUserName(t, "dpconf"), Password: "conformance-" + r.version,
	})
	squid := testenv.StartSquid(t, testenv.SquidOptions{User: "dpcache", Password: "squid-" + r.version})
	ftpURL := ftpd.URL + filepath.Base(r.root) + "/"
	empty := t.TempDir()

	var ranProxied, ranTunnel atomic.Bool
	withCA := source.Options{CAFile: ca.CAFile}
	viaSquid := source.Options{Proxy: squid.ProxyURL()}
	viaSquidCA := source.Options{Proxy: squid.ProxyURL(), CAFile: ca.CAFile}
	impls := []struct {
		name string
		urls []string // more than one: a Chain over them
		opts source.Options
		// unsigned: the source relays a document that has no signature
		// file (a DP verifies and refuses it).
		unsigned bool
	}{
		{name: "File", urls: []string{r.root}, unsigned: true},
		{name: "FileURL", urls: []string{"file://" + r.root}, unsigned: true},
		// Without the trailing slash: the repository's root is still
		// /updates/.
		{name: "HTTPNginx", urls: []string{strings.TrimSuffix(ngx.URL, "/")}, unsigned: true},
		{name: "HTTPFileServer", urls: []string{fileServer.URL}, unsigned: true},
		{name: "HTTPSNginx", urls: []string{ngx.TLSURL}, opts: withCA, unsigned: true},
		{name: "HTTPSquid", urls: []string{ngx.URL}, opts: viaSquid, unsigned: true},
		{name: "HTTPSSquidConnect", urls: []string{ngx.TLSURL}, opts: viaSquidCA, unsigned: true},
		{name: "FTPVsftpd", urls: []string{ftpURL}, unsigned: true},
		{name: "GRPCNode", urls: []string{"grpc://" + dp.GRPCAddr()}},
		{name: "ChainFTP", urls: []string{empty, ftpURL}, unsigned: true},
	}
	for _, im := range impls {
		t.Run(im.name, func(t *testing.T) {
			t.Parallel()
			opts := im.opts
			opts.Timeout = 20 * time.Second
			var src source.Source
			if len(im.urls) == 1 {
				src = parse(t, im.urls[0], opts)
			} else {
				var members []source.Source
				for _, u := range im.urls {
					s, err := source.Parse(u, opts)
					if err != nil {
						t.Fatal(err)
					}
					members = append(members, s)
				}
				chain := failover.New(members, failover.Options{Logger: testLogger(t, slog.LevelWarn+4)})
				t.Cleanup(func() { chain.Close() })
				src = chain
			}
			if im.opts.Proxy != nil && strings.HasPrefix(im.urls[0], "https:") {
				ranTunnel.Store(true)
			} else if im.opts.Proxy != nil {
				ranProxied.Store(true)
			}
			testSource(t, r, src, im.unsigned)
		})
	}
	// The proxied variants went through squid: its log has their requests
	// (a tunnel is logged when it closes, after the variant's cleanup).
	t.Cleanup(func() {
		if !ranProxied.Load() || !ranTunnel.Load() {
			return
		}
		var get, connect bool
		testenv.WaitFor(t, 10*time.Second, "squid's log of the proxied requests", func() bool {
			get, connect = false, false
			for _, e := range squid.Requests(t) {
				get = get || e.Method == "GET" && e.Status == http.StatusOK && strings.Contains(e.URL, "/updates/blobs/sha256/")
				connect = connect || e.Method == "CONNECT" && e.Status == http.StatusOK && e.URL == ngx.TLSAddr
			}
			return get && connect
		})
	})
}

// testSource is the conformance suite: what every Source guarantees.
func testSource(t *testing.T, r *repo, src source.Source, unsigned bool) {
	ctx := testCtx(t)
	// A client reads latest.json, then the manifest it names, then blobs:
	// a DP serves only blobs named by a manifest it has seen.
	latest, err := src.Latest(ctx, r.product)
	if err != nil {
		t.Fatalf("%s: Latest: %v", src, err)
	}
	l, err := r.trust.VerifyLatest(latest.Data, latest.Signature)
	if err != nil {
		t.Fatalf("%s: latest.json does not verify: %v", src, err)
	}
	m, err := src.Manifest(ctx, l.Product, l.Version)
	if err != nil {
		t.Fatalf("%s: Manifest: %v", src, err)
	}
	if _, err := r.trust.VerifyManifest(m.Data, m.Signature, l); err != nil {
		t.Fatalf("%s: manifest.json does not verify: %v", src, err)
	}

	t.Run("String", func(t *testing.T) {
		t.Parallel()
		if src.String() == "" {
			t.Error("String() is empty")
		}
	})

	t.Run("LatestVerbatim", func(t *testing.T) {
		t.Parallel()
		got, err := src.Latest(testCtx(t), r.product)
		if err != nil {
			t.Fatal(err)
		}
		p := manifest.LatestPath(r.product)
		checkSigned(t, got, r.read(t, p), r.read(t, manifest.SigPath(p)))
	})

	t.Run("ManifestVerbatim", func(t *testing.T) {
		t.Parallel()
		got, err := src.Manifest(testCtx(t), r.product, r.version)
		if err != nil {
			t.Fatal(err)
		}
		p := manifest.ManifestPath(r.product, r.version)
		checkSigned(t, got, r.read(t, p), r.read(t, manifest.SigPath(p)))
	})

	t.Run("LatestMissingProduct", func(t *testing.T) {
		t.Parallel()
		_, err := src.Latest(testCtx(t), "no-such-product")
		checkErr(t, src, err, source.ErrNotFound)
	})

	t.Run("ManifestMissingVersion", func(t *testing.T) {
		t.Parallel()
		_, err := src.Manifest(testCtx(t), r.product, "0.0.0.404")
		checkErr(t, src, err, source.ErrNotFound)
	})

	t.Run("ManifestMissingProduct", func(t *testing.T) {
		t.Parallel()
		_, err := src.Manifest(testCtx(t), "no-such-product", r.version)
		checkErr(t, src, err, source.ErrNotFound)
	})

	// ErrInvalid documents "a bad digest, product or version name": a name
	// outside [A-Za-z0-9._-]{1,128}, or "." and "..", which would name
	// another place of the repository (or, for a folder, outside it).
	t.Run("InvalidName", func(t *testing.T) {
		t.Parallel()
		for _, bad := range []string{"", ".", "..", "a/b", `a\b`, "a b", "../kes", "%2e%2e", strings.Repeat("p", manifest.MaxNameLen+1)} {
			ctx := testCtx(t)
			var wrong []string
			if _, err := src.Latest(ctx, bad); !errors.Is(err, source.ErrInvalid) {
				wrong = append(wrong, fmt.Sprintf("Latest(%q): %v", bad, err))
			}
			if _, err := src.Manifest(ctx, bad, r.version); !errors.Is(err, source.ErrInvalid) {
				wrong = append(wrong, fmt.Sprintf("Manifest(%q, %q): %v", bad, r.version, err))
			}
			if _, err := src.Manifest(ctx, r.product, bad); !errors.Is(err, source.ErrInvalid) {
				wrong = append(wrong, fmt.Sprintf("Manifest(%q, %q): %v", r.product, bad, err))
			}
			if len(wrong) > 0 {
				t.Errorf("name %q: want errors wrapping ErrInvalid, got:\n\t%s", bad, strings.Join(wrong, "\n\t"))
			}
		}
	})

	if unsigned {
		t.Run("MissingSignature", func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t)
			got, err := src.Latest(ctx, r.unsigned)
			if err != nil {
				t.Fatalf("Latest of a product without signature files: %v", err)
			}
			checkSigned(t, got, r.read(t, manifest.LatestPath(r.unsigned)), nil)
			got, err = src.Manifest(ctx, r.unsigned, r.unsignedVersion)
			if err != nil {
				t.Fatalf("Manifest of a version without signature file: %v", err)
			}
			checkSigned(t, got, r.read(t, manifest.ManifestPath(r.unsigned, r.unsignedVersion)), nil)
		})
	}

	t.Run("Blob", func(t *testing.T) {
		t.Parallel()
		for _, d := range r.digests {
			content := r.blobs[d]
			offsets := []int64{0}
			if n := int64(len(content)); n > 1 {
				offsets = append(offsets, n/2|1, n-1)
			}
			for _, off := range offsets {
				t.Run(fmt.Sprintf("%d@%d", len(content), off), func(t *testing.T) {
					t.Parallel()
					want := content[off:]
					// io.ReadAll uses Read only.
					got, err := readBlob(testCtx(t), src, d, off, io.ReadAll)
					checkBytes(t, "ReadAll", got, want, err)
					// io.Copy prefers the reader's WriteTo, when it has one.
					got, err = readBlob(testCtx(t), src, d, off, func(rd io.Reader) ([]byte, error) {
						var buf bytes.Buffer
						_, err := io.Copy(&buf, rd)
						return buf.Bytes(), err
					})
					checkBytes(t, "io.Copy", got, want, err)
				})
			}
		}
	})

	t.Run("BlobSmallReads", func(t *testing.T) {
		t.Parallel()
		for _, d := range r.digests[1:3] {
			rc, err := src.Blob(testCtx(t), d, 0)
			if err != nil {
				t.Fatal(err)
			}
			if err := iotest.TestReader(rc, r.blobs[d]); err != nil {
				t.Errorf("blob of %d bytes: %v", len(r.blobs[d]), err)
			}
			if err := rc.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		}
	})

	t.Run("BlobOddReadSizes", func(t *testing.T) {
		t.Parallel()
		d, content := r.big()
		const off = 12347
		rc, err := src.Blob(testCtx(t), d, off)
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		// Read sizes that straddle every chunk boundary a source may use.
		sizes := []int{1, 7, 4095, 4097, 65537, 262143, 3}
		var got []byte
		buf := make([]byte, 262143)
		for i := 0; ; i++ {
			n, err := rc.Read(buf[:sizes[i%len(sizes)]])
			got = append(got, buf[:n]...)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("Read after %d bytes: %v", len(got), err)
			}
		}
		checkBytes(t, "Read", got, content[off:], nil)
	})

	// The reader yields "the bytes from offset to the blob's end": at the
	// end there are none, and that is not an error (a resumed download
	// that had every byte but was not yet verified asks for exactly this).
	t.Run("BlobOffsetAtEnd", func(t *testing.T) {
		t.Parallel()
		for _, d := range r.digests {
			n := int64(len(r.blobs[d]))
			got, err := readBlob(testCtx(t), src, d, n, io.ReadAll)
			if err != nil {
				t.Errorf("blob of %d bytes at offset %d: %v", n, n, err)
			} else if len(got) != 0 {
				t.Errorf("blob of %d bytes at offset %d: got %d bytes", n, n, len(got))
			}
		}
	})

	// Past the end there is nothing the source has: an error, never an
	// empty success that a caller would take for a complete blob.
	t.Run("BlobOffsetPastEnd", func(t *testing.T) {
		t.Parallel()
		d, content := r.big()
		for _, off := range []int64{int64(len(content)) + 1, 1 << 40} {
			got, err := readBlob(testCtx(t), src, d, off, io.ReadAll)
			if err == nil {
				t.Errorf("blob of %d bytes at offset %d: got %d bytes and no error", len(content), off, len(got))
			}
		}
	})

	t.Run("BlobUnknownDigest", func(t *testing.T) {
		t.Parallel()
		rc, err := src.Blob(testCtx(t), missingDigest, 0)
		if err == nil {
			rc.Close()
		}
		checkErr(t, src, err, source.ErrNotFound)
	})

	t.Run("BlobInvalidDigest", func(t *testing.T) {
		t.Parallel()
		d := r.digests[0]
		for _, bad := range []string{
			"", "abc", d[:63], d + "0", strings.ToUpper(d),
			strings.Repeat("g", 64), "../../" + d[6:], d[:32] + "/" + d[33:], " " + d[1:],
		} {
			rc, err := src.Blob(testCtx(t), bad, 0)
			if err == nil {
				rc.Close()
			}
			if !errors.Is(err, source.ErrInvalid) {
				t.Errorf("Blob(%q): error %v, want one wrapping ErrInvalid", bad, err)
			}
		}
	})

	// Closing a reader in the middle releases the transfer (goleak in
	// TestMain catches a stream left behind), and the source keeps working.
	t.Run("BlobCloseEarly", func(t *testing.T) {
		t.Parallel()
		d, content := r.big()
		for range 3 {
			rc, err := src.Blob(testCtx(t), d, 100)
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 10)
			if _, err := io.ReadFull(rc, buf); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf, content[100:110]) {
				t.Errorf("first bytes at offset 100 differ")
			}
			if err := rc.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		}
		got, err := readBlob(testCtx(t), src, d, 0, io.ReadAll)
		checkBytes(t, "after early closes", got, content, err)
	})

	// Close without reading anything.
	t.Run("BlobCloseUnread", func(t *testing.T) {
		t.Parallel()
		d, _ := r.big()
		rc, err := src.Blob(testCtx(t), d, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := rc.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})

	// Sources are safe for concurrent use.
	t.Run("Concurrent", func(t *testing.T) {
		t.Parallel()
		g, ctx := errgroup.WithContext(testCtx(t))
		for i := range 12 {
			d := r.digests[i%len(r.digests)]
			content := r.blobs[d]
			off := int64(0)
			if len(content) > 0 {
				off = int64(i*977) % int64(len(content))
			}
			g.Go(func() error {
				if _, err := src.Latest(ctx, r.product); err != nil {
					return err
				}
				got, err := readBlob(ctx, src, d, off, io.ReadAll)
				if err != nil {
					return err
				}
				if !bytes.Equal(got, content[off:]) {
					return fmt.Errorf("blob %s at %d: wrong bytes", d[:8], off)
				}
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			t.Error(err)
		}
	})
}

// readBlob opens a blob at off, reads it with read, and closes it.
func readBlob(ctx context.Context, src source.Source, digest string, off int64, read func(io.Reader) ([]byte, error)) ([]byte, error) {
	rc, err := src.Blob(ctx, digest, off)
	if err != nil {
		return nil, err
	}
	b, err := read(rc)
	if cerr := rc.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("Close: %w", cerr)
	}
	return b, err
}

func checkSigned(t *testing.T, got source.Signed, data, sig []byte) {
	t.Helper()
	if !bytes.Equal(got.Data, data) {
		t.Errorf("document: got %d bytes, want the file's %d bytes verbatim:\n%s", len(got.Data), len(data), got.Data)
	}
	if !bytes.Equal(got.Signature, sig) {
		t.Errorf("signature: got %d bytes, want %d bytes verbatim:\n%s", len(got.Signature), len(sig), got.Signature)
	}
}

func checkBytes(t *testing.T, what string, got, want []byte, err error) {
	t.Helper()
	if err != nil {
		t.Errorf("%s: %v (after %d bytes)", what, err, len(got))
		return
	}
	if !bytes.Equal(got, want) {
		i := 0
		for i < len(got) && i < len(want) && got[i] == want[i] {
			i++
		}
		t.Errorf("%s: got %d bytes, want %d; first difference at byte %d", what, len(got), len(want), i)
	}
}

// checkErr checks that err wraps want and names the source (every member
// of a Chain).
func checkErr(t *testing.T, src source.Source, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Errorf("%s: error %v, want one wrapping %q", src, err, want)
		return
	}
	names := []string{src.String()}
	if c, ok := src.(*failover.Chain); ok {
		names = names[:0]
		for _, m := range c.Sources() {
			names = append(names, m.String())
		}
	}
	for _, name := range names {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error %q does not name the source %s", err, name)
		}
	}
}
