package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// fakeWinFS is winFS on any system, keeping the rules of Windows that the
// pointer switcher must live with, over the real files of a directory:
//
//   - A file that another program holds open (open) cannot be removed,
//     renamed, replaced by a rename or rewritten, through any of its hard
//     links: NTFS checks sharing per file, not per name.
//   - A directory under which a file was opened, by a path through it,
//     cannot be renamed.
//   - A rename replaces a file, never a directory or a directory link.
//   - A path made busy (busy) fails that many operations as in use: a
//     reader holding a pointer file for a moment.
//   - Lock is exclusive per file, refused (not waited for) while held.
//   - It offers no symlinks: the switcher has none to make.
//
// Its in-use errors are what the real one's are: inUseError.
type fakeWinFS struct {
	mu     sync.Mutex
	opened []openFile
	busy   map[string]int
	locks  map[string]bool
	reboot []string
}

type openFile struct {
	path string
	fi   fs.FileInfo
}

func newFakeWinFS() *fakeWinFS {
	return &fakeWinFS{busy: map[string]int{}, locks: map[string]bool{}}
}

// open holds path open as another program would, until close is called.
func (f *fakeWinFS) open(path string) (close func()) {
	fi, err := os.Stat(path)
	if err != nil {
		panic(fmt.Sprintf("fake open %s: %v", path, err))
	}
	of := openFile{path: filepath.Clean(path), fi: fi}
	f.mu.Lock()
	f.opened = append(f.opened, of)
	f.mu.Unlock()
	return func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		for i, o := range f.opened {
			if o == of {
				f.opened = append(f.opened[:i], f.opened[i+1:]...)
				return
			}
		}
	}
}

// makeBusy makes the next n operations on path fail as in use.
func (f *fakeWinFS) makeBusy(path string, n int) {
	f.mu.Lock()
	f.busy[filepath.Clean(path)] = n
	f.mu.Unlock()
}

func (f *fakeWinFS) scheduled() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.reboot...)
}

// inUse reports whether path is a file held open (by any of its names), or
// busy. Call with f.mu held.
func (f *fakeWinFS) inUse(path string) bool {
	path = filepath.Clean(path)
	if n := f.busy[path]; n > 0 {
		f.busy[path] = n - 1
		return true
	}
	fi, err := os.Lstat(path)
	if err != nil || !fi.Mode().IsRegular() {
		return false
	}
	for _, o := range f.opened {
		if os.SameFile(o.fi, fi) {
			return true
		}
	}
	return false
}

// openUnder reports whether a file was opened through a path under dir.
// Call with f.mu held.
func (f *fakeWinFS) openUnder(dir string) bool {
	prefix := filepath.Clean(dir) + string(filepath.Separator)
	for _, o := range f.opened {
		if strings.HasPrefix(o.path, prefix) {
			return true
		}
	}
	return false
}

func sharingViolation(op, path string) error {
	return &fs.PathError{Op: op, Path: path, Err: &inUseError{errors.New("the process cannot access the file because it is being used by another process")}}
}

func (f *fakeWinFS) Lstat(name string) (fs.FileInfo, error)     { return os.Lstat(name) }
func (f *fakeWinFS) ReadDir(name string) ([]fs.DirEntry, error) { return os.ReadDir(name) }
func (f *fakeWinFS) MkdirAll(name string) error                 { return os.MkdirAll(name, 0o755) }

func (f *fakeWinFS) WriteFileSync(name string, data []byte) error {
	f.mu.Lock()
	busy := f.inUse(name)
	f.mu.Unlock()
	if busy {
		return sharingViolation("open", name)
	}
	fh, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	_, err = fh.Write(data)
	if err == nil {
		err = fh.Sync()
	}
	if cerr := fh.Close(); err == nil {
		err = cerr
	}
	return err
}

func (f *fakeWinFS) Rename(from, to string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	fi, err := os.Lstat(from)
	if err != nil {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: err}
	}
	if fi.IsDir() && f.openUnder(from) || !fi.IsDir() && f.inUse(from) {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: &inUseError{errors.New("sharing violation")}}
	}
	if tfi, err := os.Lstat(to); err == nil {
		switch {
		case tfi.IsDir() || tfi.Mode()&fs.ModeSymlink != 0:
			return &os.LinkError{Op: "rename", Old: from, New: to, Err: errors.New("access is denied (cannot replace a directory)")}
		case f.inUse(to):
			return &os.LinkError{Op: "rename", Old: from, New: to, Err: &inUseError{errors.New("sharing violation")}}
		}
	}
	return os.Rename(from, to)
}

func (f *fakeWinFS) Remove(name string) error {
	f.mu.Lock()
	busy := f.inUse(name)
	f.mu.Unlock()
	if busy {
		return sharingViolation("remove", name)
	}
	return os.Remove(name)
}

func (f *fakeWinFS) RemoveAtReboot(name string) error {
	f.mu.Lock()
	f.reboot = append(f.reboot, name)
	f.mu.Unlock()
	return nil
}

func (f *fakeWinFS) Lock(name string) (func(), error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.locks[name] {
		return nil, errLocked
	}
	fh, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	fh.Close()
	f.locks[name] = true
	return func() {
		f.mu.Lock()
		delete(f.locks, name)
		f.mu.Unlock()
	}, nil
}
