package catalog

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/dpcache/dpcache/manifest"
)

type noBlobs struct{}

func (noBlobs) EnsureBlob(context.Context, string) error { return nil }
func (noBlobs) Received(string) (int64, bool)            { return 0, false }
func (noBlobs) InFlight() []string                       { return nil }

// The chunk lists of chunked files are learnt from manifests and forgotten
// with the last version that names them.
func TestCatalog_Chunked(t *testing.T) {
	t.Parallel()
	d := func(c string) string { return strings.Repeat(c, 64) }
	chunks := []manifest.Chunk{{SHA256: d("1"), Size: 3}, {SHA256: d("2"), Size: 4}}
	file := manifest.File{Path: "databases/a.dat", Size: 7, SHA256: d("a"), Component: manifest.ComponentDatabases, Chunks: chunks}
	whole := manifest.File{Path: "modules/m", Size: 5, SHA256: d("b"), Component: manifest.ComponentModules}
	c := New(context.Background(), Config{}, nil, nil, noBlobs{}, nil, nil)
	c.register(&manifest.Manifest{Product: "av", Version: "1", Serial: 1, Files: []manifest.File{file, whole}})
	c.register(&manifest.Manifest{Product: "av", Version: "2", Serial: 2, Files: []manifest.File{file}})

	got, ok := c.Chunked(d("a"))
	if !ok || got.Size != 7 || got.SHA256 != d("a") || !slices.Equal(got.Chunks, chunks) {
		t.Fatalf("Chunked(file) = %+v, %v", got, ok)
	}
	if _, ok := c.Chunked(d("b")); ok {
		t.Fatal("an unchunked file is listed as chunked")
	}
	if _, ok := c.BlobSize(d("a")); ok {
		t.Fatal("a chunked file's whole digest is a blob to fetch")
	}
	c.forgetManifest("av", "1")
	if _, ok := c.Chunked(d("a")); !ok {
		t.Fatal("forgotten while version 2 still names it")
	}
	c.forgetManifest("av", "2")
	if _, ok := c.Chunked(d("a")); ok {
		t.Fatal("still listed after every version naming it was forgotten")
	}
}
