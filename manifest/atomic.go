package manifest

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
)

// WriteFileAtomic writes data to path so that readers see the old file or
// the new one, whole, even after a crash: it writes a temporary file in the
// same directory (which must exist), syncs it, renames it over path and
// syncs the directory. The file gets mode 0644. Concurrent writers of one
// path each leave a whole file; the last rename wins.
func WriteFileAtomic(path string, data []byte) error {
	_, err := writeAtomic(path, bytes.NewReader(data), nil, true)
	return err
}

// writeAtomic writes the content of r to path so that path never holds a
// partial file: it writes a temporary file in the same directory, syncs it,
// renames it over path and, if syncParent, syncs the directory (callers
// writing many files into one directory sync it once at the end). It returns
// the number of bytes written. If check is not nil, it runs after the data
// is written and synced; an error from it abandons the write.
func writeAtomic(path string, r io.Reader, check func() error, syncParent bool) (int64, error) {
	dir := filepath.Dir(path)
	var rb [8]byte
	if _, err := rand.Read(rb[:]); err != nil {
		return 0, err
	}
	tmp := filepath.Join(dir, ".tmp-"+filepath.Base(path)+"-"+hex.EncodeToString(rb[:]))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return 0, fmt.Errorf("create temporary file: %w", err)
	}
	n, err := copyBuffered(f, r)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && check != nil {
		err = check()
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return 0, fmt.Errorf("write %s: %w", path, err)
	}
	if !syncParent {
		return n, nil
	}
	if err := SyncDir(dir); err != nil {
		return n, err
	}
	return n, nil
}

// SyncDir makes the creations, renames and removals of entries in dir
// durable (fsync of the directory). The error names dir. On Windows it
// does nothing: a directory cannot be flushed there (FlushFileBuffers
// needs write access, which a directory handle does not get), and NTFS
// journals its metadata.
func SyncDir(dir string) error {
	if runtime.GOOS == "windows" {
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// mkdirAll creates dir and its missing parents (mode 0755), syncing each
// parent of a directory it created.
func mkdirAll(dir string) error {
	if fi, err := os.Stat(dir); err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("%s exists and is not a directory", dir)
		}
		return nil
	}
	parent := filepath.Dir(dir)
	if parent != dir {
		if err := mkdirAll(parent); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o755); err != nil && !os.IsExist(err) {
		return err
	}
	return SyncDir(parent)
}

// copyBuffered copies r to w through a 1 MiB buffer: 32 KiB reads (io.Copy's
// default when no fast path applies) cost more in system calls than
// hashing costs.
func copyBuffered(w io.Writer, r io.Reader) (int64, error) {
	buf := make([]byte, 1<<20)
	var n int64
	for {
		m, err := r.Read(buf)
		if m > 0 {
			if _, werr := w.Write(buf[:m]); werr != nil {
				return n, werr
			}
			n += int64(m)
		}
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// WriteNewFile creates path exclusively (it must not exist), writes data
// and syncs it; on failure it removes what it created.
func WriteNewFile(path string, data []byte, mode fs.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(path)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
