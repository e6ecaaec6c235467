package agent

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/dpcache/dpcache/manifest"
)

// stage is a version being assembled under .dpcache/staging/<version>/.
// Its methods are safe for concurrent use on distinct paths.
type stage struct {
	dir   string // staging/<version>
	files string // dir/files: becomes the product's `current`
}

func newStage(l layout, version string) (*stage, error) {
	s := &stage{dir: filepath.Join(l.staging, version)}
	s.files = filepath.Join(s.dir, filesDirName)
	if err := os.MkdirAll(s.files, 0o755); err != nil {
		return nil, &localError{fmt.Errorf("create staging directory: %w", err)}
	}
	return s, nil
}

// target returns where manifest path rel goes in the stage, after creating
// its parent directories. It refuses (ErrUnsafePath) a path that
// manifest.ValidPath rejects, one that would leave the stage once joined,
// one whose existing parent is a symlink or not a directory, and one that
// already exists.
func (s *stage) target(rel string) (string, error) {
	if err := manifest.ValidPath(rel); err != nil {
		return "", fmt.Errorf("file %q: %w: %v", rel, ErrUnsafePath, err)
	}
	full := filepath.Join(s.files, filepath.FromSlash(rel))
	if r, err := filepath.Rel(s.files, full); err != nil || r == "." || r == ".." ||
		strings.HasPrefix(r, ".."+string(filepath.Separator)) || filepath.IsAbs(r) {
		return "", fmt.Errorf("file %q: would be written outside the install directory: %w", rel, ErrUnsafePath)
	}
	dir := s.files
	elems := strings.Split(rel, "/")
	for _, e := range elems[:len(elems)-1] {
		dir = filepath.Join(dir, e)
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return "", &localError{fmt.Errorf("file %q: create directory %s: %w", rel, dir, err)}
		}
		fi, err := os.Lstat(dir)
		if err != nil {
			return "", &localError{fmt.Errorf("file %q: %w", rel, err)}
		}
		if !fi.IsDir() { // a symlink, planted or not, is never followed
			return "", fmt.Errorf("file %q: %s is a %s, not a directory: %w", rel, dir, fileKind(fi), ErrUnsafePath)
		}
	}
	if fi, err := os.Lstat(full); err == nil {
		return "", fmt.Errorf("file %q: %s already exists (a %s): %w", rel, full, fileKind(fi), ErrUnsafePath)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", &localError{fmt.Errorf("file %q: %w", rel, err)}
	}
	return full, nil
}

// place puts the verified file src at each of paths in the stage: a hard
// link when the file system allows, else a verified copy.
func (s *stage) place(src string, paths []string, digest string, size int64) error {
	for _, rel := range paths {
		dst, err := s.target(rel)
		if err != nil {
			return err
		}
		if err := os.Link(src, dst); err == nil {
			continue
		}
		if err := copyVerified(src, dst, digest, size); err != nil {
			return fmt.Errorf("file %q: %w", rel, err)
		}
	}
	return nil
}

// createEmpty creates the empty files at paths.
func (s *stage) createEmpty(paths []string) error {
	for _, rel := range paths {
		dst, err := s.target(rel)
		if err != nil {
			return err
		}
		if err := writeFileSync(dst, nil); err != nil {
			return err
		}
	}
	return nil
}

// sync makes every directory of the stage durable (the files were synced
// when written).
func (s *stage) sync() error {
	return filepath.WalkDir(s.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return &localError{err}
		}
		if !d.IsDir() {
			return nil
		}
		if err := manifest.SyncDir(p); err != nil {
			return &localError{err}
		}
		return nil
	})
}

// copyVerified copies src to the new file dst, checking size and SHA-256
// on the way, and syncs dst.
func copyVerified(src, dst, digest string, size int64) error {
	in, err := os.Open(src)
	if err != nil {
		return &localError{fmt.Errorf("copy: %w", err)}
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return &localError{fmt.Errorf("copy: %w", err)}
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(out, h), io.LimitReader(in, size+1))
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(dst)
		return &localError{fmt.Errorf("copy %s to %s: %w", src, dst, err)}
	}
	if got := hex.EncodeToString(h.Sum(nil)); n != size || got != digest {
		_ = os.Remove(dst)
		return fmt.Errorf("copy of %s changed while copied: %w", src, ErrDigestMismatch)
	}
	return nil
}

// verifyFile reports whether path is a regular file of the given size and
// SHA-256. Unreadable or missing files are simply not a match.
func verifyFile(path, digest string, size int64) bool {
	fi, err := os.Lstat(path)
	if err != nil || !fi.Mode().IsRegular() || fi.Size() != size {
		return false
	}
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(f, size+1))
	return err == nil && n == size && hex.EncodeToString(h.Sum(nil)) == digest
}
