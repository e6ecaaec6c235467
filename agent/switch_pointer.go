package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strconv"
	"time"
)

// pointerSwitch is the Windows switcher, written against winFS so that a
// test on Linux runs it over a file system that keeps Windows' rules
// (fakewin_test.go); on Windows winFS is os plus MoveFileEx and LockFileEx
// (fs_windows.go).
//
// Windows differs from Unix in three ways that matter here:
//
//   - Symlinks need an administrator or developer mode, and a directory
//     link cannot be replaced by a rename. `current` and `previous` are
//     therefore pointer files: one line, the version's files directory
//     relative to DIR\<product> (".dpcache/versions/2.0/files"), replaced
//     by writing a temporary file, flushing it, and MoveFileEx with
//     MOVEFILE_REPLACE_EXISTING|MOVEFILE_WRITE_THROUGH, which is atomic on
//     NTFS: a reader sees the old line or the new one.
//   - A file open in another process, through any of its hard links, can
//     be neither deleted nor renamed, and a directory holding a file
//     opened through it cannot be renamed. Removal first renames the whole
//     directory to .dpcache/trash/ (that works when the open files were
//     opened through another version's links, the usual case), then
//     deletes what it can; what is left is deleted by later runs, and, as
//     a last resort, is scheduled for deletion at the next reboot (which
//     only an administrator may do; it is not an error otherwise). A
//     directory that cannot even be renamed stays where it is and the
//     next run tries again; a version name it blocks is not reused.
//   - A reader holding a pointer file open makes the rename over it fail
//     for that moment: the switch retries for a while.
//
// The lock is LockFileEx, exclusive and non-blocking, on .dpcache/lock;
// Windows releases it when the process dies.
type pointerSwitch struct {
	fs winFS
	// retries and pause bound the retry of a rename over a pointer that a
	// reader holds open.
	retries int
	pause   time.Duration
}

// winFS is the file system as pointerSwitch uses it. Errors for a file in
// use (ERROR_SHARING_VIOLATION, ERROR_ACCESS_DENIED, ERROR_LOCK_VIOLATION)
// match errInUse.
type winFS interface {
	Lstat(name string) (fs.FileInfo, error)
	ReadDir(name string) ([]fs.DirEntry, error)
	MkdirAll(name string) error
	// WriteFileSync creates or truncates name, writes data and flushes it
	// to disk.
	WriteFileSync(name string, data []byte) error
	// Rename is MoveFileEx(MOVEFILE_REPLACE_EXISTING|MOVEFILE_WRITE_THROUGH):
	// it replaces a file, never a directory.
	Rename(from, to string) error
	Remove(name string) error
	// RemoveAtReboot schedules name for deletion at the next reboot
	// (MoveFileEx with MOVEFILE_DELAY_UNTIL_REBOOT).
	RemoveAtReboot(name string) error
	// Lock takes an exclusive lock on name, creating it, without waiting:
	// errLocked when another holder has it.
	Lock(name string) (unlock func(), err error)
}

var (
	// errInUse is a file open elsewhere: it cannot be removed or renamed
	// now.
	errInUse = errors.New("in use by another program")
	// errLocked is a lock that another holder has.
	errLocked = errors.New("locked by another process")
)

func newPointerSwitch(fsys winFS) *pointerSwitch {
	return &pointerSwitch{fs: fsys, retries: 20, pause: 50 * time.Millisecond}
}

func (p *pointerSwitch) lock(path string) (func(), error) {
	unlock, err := p.fs.Lock(path)
	if errors.Is(err, errLocked) {
		return nil, fmt.Errorf("%s is held: %w; wait for it to finish", path, ErrBusy)
	}
	if err != nil {
		return nil, &localError{fmt.Errorf("lock %s: %w", path, err)}
	}
	return unlock, nil
}

// setLink writes the pointer to a temporary file and renames it over the
// link. A symlink there (a directory made on Unix, or by hand) is removed
// first: it may be a directory link, which no rename replaces. That one
// change is not atomic: a crash in between leaves no link, and the next
// run installs afresh from the versions on disk, downloading nothing.
func (p *pointerSwitch) setLink(l layout, link, name string) error {
	tmp, dst := l.tempLinkPath(link), l.linkPath(link)
	if err := p.fs.WriteFileSync(tmp, pointerText(name)); err != nil {
		_ = p.fs.Remove(tmp)
		return &localError{fmt.Errorf("write %s: %w", tmp, err)}
	}
	if fi, err := p.fs.Lstat(dst); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		if err := p.fs.Remove(dst); err != nil {
			return &localError{fmt.Errorf("replace link %s by a pointer file: %w", dst, err)}
		}
	}
	var err error
	for attempt := 0; ; attempt++ {
		if err = p.fs.Rename(tmp, dst); err == nil || !errors.Is(err, errInUse) || attempt == p.retries {
			break
		}
		time.Sleep(p.pause)
	}
	if err != nil {
		_ = p.fs.Remove(tmp)
		if errors.Is(err, errInUse) {
			return &localError{fmt.Errorf("switch %s to %s: %w; close the program reading it", dst, name, err)}
		}
		return &localError{fmt.Errorf("switch %s to %s: %w", dst, name, err)}
	}
	return nil
}

// discard removes a file, or a file in use is left for a later run (it
// could not be renamed either). A directory is renamed into the trash
// first, so that its name is free at once, then emptied as far as it can
// be.
func (p *pointerSwitch) discard(l layout, path string) error {
	fi, err := p.fs.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return &localError{fmt.Errorf("remove %s: %w", path, err)}
	}
	if !fi.IsDir() {
		_, err := p.removeTree(path)
		return err
	}
	if err := p.fs.MkdirAll(l.trash); err != nil {
		return &localError{fmt.Errorf("create %s: %w", l.trash, err)}
	}
	aside := filepath.Join(l.trash, filepath.Base(path)+"."+strconv.FormatInt(time.Now().UnixNano(), 36))
	moved := false
	switch err := p.fs.Rename(path, aside); {
	case err == nil:
		moved = true
		path = aside
	case !errors.Is(err, errInUse):
		return &localError{fmt.Errorf("move %s to %s: %w", path, l.trash, err)}
	}
	left, err := p.removeTree(path)
	if err != nil {
		return err
	}
	if moved && len(left) > 0 {
		// Last resort for what stays in use until the machine restarts.
		// Scheduled once, when moved: a name in the trash is never reused.
		for _, q := range left {
			_ = p.fs.RemoveAtReboot(q)
		}
	}
	p.removeEmptyTrash(l)
	return nil
}

// cleanup deletes what it can of the trash.
func (p *pointerSwitch) cleanup(l layout) error {
	entries, err := p.fs.ReadDir(l.trash)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return &localError{fmt.Errorf("list %s: %w", l.trash, err)}
	}
	for _, e := range entries {
		if _, err := p.removeTree(filepath.Join(l.trash, e.Name())); err != nil {
			return err
		}
	}
	p.removeEmptyTrash(l)
	return nil
}

// removeEmptyTrash removes the trash when nothing is left in it.
func (p *pointerSwitch) removeEmptyTrash(l layout) {
	if entries, err := p.fs.ReadDir(l.trash); err == nil && len(entries) == 0 {
		_ = p.fs.Remove(l.trash)
	}
}

// removeTree removes path and what it holds, going on past files in use.
// It returns what it left (files first, then their directories, the order
// a reboot deletes them in) and fails only for other errors.
func (p *pointerSwitch) removeTree(path string) (left []string, err error) {
	fi, err := p.fs.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, &localError{fmt.Errorf("remove %s: %w", path, err)}
	}
	if fi.IsDir() {
		entries, err := p.fs.ReadDir(path)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, &localError{fmt.Errorf("list %s: %w", path, err)}
		}
		for _, e := range entries {
			l, err := p.removeTree(filepath.Join(path, e.Name()))
			if err != nil {
				return nil, err
			}
			left = append(left, l...)
		}
		if len(left) > 0 {
			return append(left, path), nil
		}
	}
	switch err := p.fs.Remove(path); {
	case err == nil, errors.Is(err, fs.ErrNotExist):
		return left, nil
	case errors.Is(err, errInUse):
		return append(left, path), nil
	default:
		return nil, &localError{fmt.Errorf("remove %s: %w", path, err)}
	}
}

// inUseError is a file system error for a file in use: it matches
// errInUse and what it wraps.
type inUseError struct{ err error }

func (e *inUseError) Error() string        { return e.err.Error() + " (" + errInUse.Error() + ")" }
func (e *inUseError) Unwrap() error        { return e.err }
func (e *inUseError) Is(target error) bool { return target == errInUse }
