package agent

import (
	"errors"
	"io/fs"
	"os"
	"time"

	"golang.org/x/sys/windows"
)

// osWinFS is winFS on Windows: os, and MoveFileEx and LockFileEx from
// golang.org/x/sys/windows.
type osWinFS struct{}

func newSystemSwitcher() switcher { return newPointerSwitch(osWinFS{}) }

// lockFile takes an exclusive, non-blocking LockFileEx lock on path, which
// Windows releases if the process dies.
func lockFile(path string) (unlock func(), err error) {
	return newPointerSwitch(osWinFS{}).lock(path)
}

func (osWinFS) Lstat(name string) (fs.FileInfo, error)     { return os.Lstat(name) }
func (osWinFS) ReadDir(name string) ([]fs.DirEntry, error) { return os.ReadDir(name) }
func (osWinFS) MkdirAll(name string) error                 { return os.MkdirAll(name, 0o755) }

func (osWinFS) WriteFileSync(name string, data []byte) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return inUse(err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return inUse(err)
}

func (osWinFS) Rename(from, to string) error {
	f, err := windows.UTF16PtrFromString(from)
	if err != nil {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: err}
	}
	t, err := windows.UTF16PtrFromString(to)
	if err != nil {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: err}
	}
	if err := windows.MoveFileEx(f, t, windows.MOVEFILE_REPLACE_EXISTING|windows.MOVEFILE_WRITE_THROUGH); err != nil {
		return inUse(&os.LinkError{Op: "rename", Old: from, New: to, Err: err})
	}
	return nil
}

func (osWinFS) Remove(name string) error { return inUse(os.Remove(name)) }

func (osWinFS) RemoveAtReboot(name string) error {
	p, err := windows.UTF16PtrFromString(name)
	if err != nil {
		return err
	}
	return windows.MoveFileEx(p, nil, windows.MOVEFILE_DELAY_UNTIL_REBOOT)
}

// Lock opens name sharing read, write and delete (so that a holder may
// remove the file on its way out, as Mirror does) and locks its first
// byte. A lock taken on a file that was removed meanwhile is dropped and
// taken again on the new one.
func (osWinFS) Lock(name string) (func(), error) {
	p, err := windows.UTF16PtrFromString(name)
	if err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		h, err := windows.CreateFile(p, windows.GENERIC_READ|windows.GENERIC_WRITE,
			windows.FILE_SHARE_READ|windows.FILE_SHARE_WRITE|windows.FILE_SHARE_DELETE,
			nil, windows.OPEN_ALWAYS, windows.FILE_ATTRIBUTE_NORMAL, 0)
		if err != nil {
			// A lock file being removed by its holder (delete pending)
			// refuses to open for a moment.
			if errors.Is(err, windows.ERROR_ACCESS_DENIED) && attempt < 3 {
				time.Sleep(20 * time.Millisecond)
				continue
			}
			return nil, &os.PathError{Op: "open", Path: name, Err: err}
		}
		f := os.NewFile(uintptr(h), name)
		ol := new(windows.Overlapped)
		err = windows.LockFileEx(h, windows.LOCKFILE_EXCLUSIVE_LOCK|windows.LOCKFILE_FAIL_IMMEDIATELY, 0, 1, 0, ol)
		if err != nil {
			f.Close()
			if errors.Is(err, windows.ERROR_LOCK_VIOLATION) || errors.Is(err, windows.ERROR_IO_PENDING) {
				return nil, errLocked
			}
			return nil, &os.PathError{Op: "lock", Path: name, Err: err}
		}
		unlock := func() {
			_ = windows.UnlockFileEx(h, 0, 1, 0, ol)
			f.Close()
		}
		held, herr := f.Stat()
		named, nerr := os.Stat(name)
		if herr == nil && nerr == nil && os.SameFile(held, named) {
			return unlock, nil
		}
		unlock()
		if attempt == 3 {
			return nil, errLocked
		}
	}
}

// diskFull reports whether err is a full disk (or quota).
func diskFull(err error) bool {
	return errors.Is(err, windows.ERROR_DISK_FULL) || errors.Is(err, windows.ERROR_HANDLE_DISK_FULL) ||
		errors.Is(err, windows.ERROR_DISK_QUOTA_EXCEEDED)
}

// inUse marks the errors Windows gives for a file open elsewhere.
func inUse(err error) error {
	if errors.Is(err, windows.ERROR_SHARING_VIOLATION) || errors.Is(err, windows.ERROR_ACCESS_DENIED) ||
		errors.Is(err, windows.ERROR_LOCK_VIOLATION) {
		return &inUseError{err}
	}
	return err
}
