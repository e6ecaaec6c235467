package source

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// File is a repository in a local or mounted folder.
type File struct {
	root string
}

// NewFile returns a Source reading the repository rooted at folder root (a
// relative root is taken from the working directory now).
func NewFile(root string) *File {
	if abs, err := filepath.Abs(root); err == nil {
		root = abs
	}
	return &File{root: filepath.Clean(root)}
}

// String implements Source.
func (f *File) String() string { return "file://" + filepath.ToSlash(f.root) }

// Close implements Source.
func (f *File) Close() error { return nil }

// Latest implements Source.
func (f *File) Latest(ctx context.Context, product string) (Signed, error) {
	rel, err := LatestPath(product)
	if err != nil {
		return Signed{}, err
	}
	return f.signed(rel)
}

// Manifest implements Source.
func (f *File) Manifest(ctx context.Context, product, version string) (Signed, error) {
	rel, err := ManifestPath(product, version)
	if err != nil {
		return Signed{}, err
	}
	return f.signed(rel)
}

func (f *File) signed(rel string) (Signed, error) {
	data, err := f.read(rel)
	if err != nil {
		return Signed{}, err
	}
	sig, err := f.read(rel + ".minisig")
	if err != nil && !errors.Is(err, ErrNotFound) {
		return Signed{}, err
	}
	return Signed{Data: data, Signature: sig, Source: f.String()}, nil
}

// read reads a document, at most maxDocument bytes.
func (f *File) read(rel string) ([]byte, error) {
	fh, err := os.Open(filepath.Join(f.root, filepath.FromSlash(rel)))
	if err != nil {
		return nil, f.wrap(rel, err)
	}
	defer fh.Close()
	b, err := io.ReadAll(io.LimitReader(fh, maxDocument+1))
	if err != nil {
		return nil, f.wrap(rel, err)
	}
	if len(b) > maxDocument {
		return nil, fmt.Errorf("%s: %s: document larger than %d bytes: %w", f, rel, maxDocument, ErrDataLoss)
	}
	return b, nil
}

func (f *File) wrap(rel string, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s: %s: %w", f, rel, ErrNotFound)
	}
	return fmt.Errorf("%s: %s: %w: %v", f, rel, ErrUnavailable, err)
}

// Blob implements Source.
func (f *File) Blob(ctx context.Context, digest string, offset int64) (io.ReadCloser, error) {
	rel, err := BlobPath(digest)
	if err != nil {
		return nil, err
	}
	fh, err := os.Open(filepath.Join(f.root, filepath.FromSlash(rel)))
	if err != nil {
		return nil, f.wrap(rel, err)
	}
	if st, err := fh.Stat(); err != nil {
		fh.Close()
		return nil, f.wrap(rel, err)
	} else if offset > st.Size() {
		fh.Close()
		return nil, fmt.Errorf("%s: %s: offset %d is past the end (%d bytes): %w", f, rel, offset, st.Size(), ErrDataLoss)
	}
	if offset > 0 {
		if _, err := fh.Seek(offset, io.SeekStart); err != nil {
			fh.Close()
			return nil, f.wrap(rel, err)
		}
	}
	return fh, nil
}
