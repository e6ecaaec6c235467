package source_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/dpcache/dpcache/source"
)

// TestFile_NamesStayInsideRoot: product and version names are path elements
// of the repository; "." and ".." must not make a folder source read
// documents outside its root.
func TestFile_NamesStayInsideRoot(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	root := filepath.Join(dir, "repo")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	outside := []byte("a file outside the repository")
	for _, name := range []string{"latest.json", "manifest.json"} {
		if err := os.WriteFile(filepath.Join(dir, name), outside, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	src := source.NewFile(root)
	ctx := testCtx(t)
	got, err := src.Latest(ctx, "..")
	if err == nil || bytes.Equal(got.Data, outside) {
		t.Errorf(`Latest(ctx, "..") = %q, %v: read outside the root; want an error wrapping ErrInvalid`, got.Data, err)
	} else if !errors.Is(err, source.ErrInvalid) {
		t.Errorf(`Latest(ctx, ".."): error %v, want one wrapping ErrInvalid`, err)
	}
	got, err = src.Manifest(ctx, "..", ".")
	if err == nil || bytes.Equal(got.Data, outside) {
		t.Errorf(`Manifest(ctx, "..", ".") = %q, %v: read outside the root; want an error wrapping ErrInvalid`, got.Data, err)
	} else if !errors.Is(err, source.ErrInvalid) {
		t.Errorf(`Manifest(ctx, "..", "."): error %v, want one wrapping ErrInvalid`, err)
	}
}

// TestFile_Unreadable: a path that exists but is not a readable file is
// ErrUnavailable (something is wrong with the share), not ErrNotFound.
func TestFile_Unreadable(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	// latest.json is a directory.
	if err := os.MkdirAll(filepath.Join(root, "kes", "latest.json"), 0o755); err != nil {
		t.Fatal(err)
	}
	src := source.NewFile(root)
	_, err := src.Latest(testCtx(t), "kes")
	checkErr(t, src, err, source.ErrUnavailable)
}

// TestFile_RootMissing: a share that is not mounted reads as "not found"
// for every document, naming the folder.
func TestFile_RootMissing(t *testing.T) {
	t.Parallel()
	src := source.NewFile(filepath.Join(t.TempDir(), "not-mounted"))
	_, err := src.Latest(testCtx(t), "kes")
	checkErr(t, src, err, source.ErrNotFound)
	rc, err := src.Blob(testCtx(t), missingDigest, 0)
	if err == nil {
		rc.Close()
	}
	checkErr(t, src, err, source.ErrNotFound)
}

// TestFile_DocumentTooLarge: a folder's document is read with a size cap,
// like every other source's: a 65 MiB latest.json (a sparse file) is
// refused as corrupt, not read into memory.
func TestFile_DocumentTooLarge(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	p := filepath.Join(root, "kes", "latest.json")
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, 65<<20); err != nil {
		t.Fatal(err)
	}
	src := source.NewFile(root)
	_, err := src.Latest(testCtx(t), "kes")
	checkErr(t, src, err, source.ErrDataLoss)
}
