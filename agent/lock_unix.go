//go:build unix

package agent

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// lockFile takes an exclusive, non-blocking flock(2) on path, which the
// kernel releases if the process dies. A lock file that its holder removes
// on the way out (the mirror's) is safe: a lock taken on a file that was
// unlinked meanwhile is dropped and taken again on the new one.
func lockFile(path string) (unlock func(), err error) {
	for attempt := 0; ; attempt++ {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			return nil, &localError{fmt.Errorf("open lock %s: %w", path, err)}
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, syscall.EWOULDBLOCK) {
				return nil, fmt.Errorf("%s is held: %w; wait for it to finish", path, ErrBusy)
			}
			return nil, &localError{fmt.Errorf("lock %s: %w", path, err)}
		}
		unlock := func() {
			_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
			f.Close()
		}
		held, herr := f.Stat()
		named, nerr := os.Stat(path)
		if herr == nil && nerr == nil && os.SameFile(held, named) {
			return unlock, nil
		}
		unlock()
		if attempt == 3 {
			// Holders keep removing it under us: someone is busy there.
			return nil, fmt.Errorf("%s keeps being replaced: %w; wait for it to finish", path, ErrBusy)
		}
	}
}
