package agent

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"

	"github.com/dpcache/dpcache/manifest"
)

// A switcher is how the agent, on one kind of system, locks a product,
// points `current` and `previous` at a version directory, and removes what
// it no longer needs. Two exist:
//
//   - symlinkSwitch (Unix): `current` is a symlink replaced by rename(2),
//     the lock is flock(2), and a file is removed even while open.
//   - pointerSwitch (Windows, switch_pointer.go): `current` is a small
//     text file naming the version directory, replaced by MoveFileEx; the
//     lock is LockFileEx; a file open elsewhere cannot be removed or
//     renamed, so removal moves what it cannot delete to .dpcache/trash/
//     and later runs finish it.
//
// Both read either form (readLink), so an install directory made on one
// system is understood on the other; each writes its own.
type switcher interface {
	// lock takes the exclusive lock on path, without waiting: ErrBusy
	// when another run holds it.
	lock(path string) (unlock func(), err error)
	// setLink points link (current or previous) at version directory
	// name, atomically and durably.
	setLink(l layout, link, name string) error
	// discard removes path (a version directory, a stage, a download).
	// What is in use and cannot be removed yet does not fail it: it is
	// left for a later run, which calls discard or cleanup again.
	discard(l layout, path string) error
	// cleanup finishes the removals earlier runs left (the trash).
	cleanup(l layout) error
}

// defaultSwitcher is this system's switcher.
var defaultSwitcher switcher = newSystemSwitcher()

// symlinkSwitch is the Unix switcher, the agent's behaviour since its
// first version.
type symlinkSwitch struct{}

func (symlinkSwitch) lock(path string) (func(), error) { return lockFile(path) }

// setLink replaces link atomically: a temporary symlink renamed over the
// old one, then the directory synced.
func (symlinkSwitch) setLink(l layout, link, name string) error {
	tmp := l.tempLinkPath(link)
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return &localError{fmt.Errorf("remove %s: %w", tmp, err)}
	}
	if err := os.Symlink(linkTarget(name), tmp); err != nil {
		return &localError{fmt.Errorf("create link %s: %w", tmp, err)}
	}
	if err := os.Rename(tmp, l.linkPath(link)); err != nil {
		_ = os.Remove(tmp)
		return &localError{fmt.Errorf("switch %s to %s: %w", l.linkPath(link), name, err)}
	}
	if err := manifest.SyncDir(l.root); err != nil {
		return &localError{err}
	}
	return nil
}

func (symlinkSwitch) discard(_ layout, path string) error {
	if err := os.RemoveAll(path); err != nil {
		return &localError{fmt.Errorf("remove %s: %w", path, err)}
	}
	return nil
}

func (symlinkSwitch) cleanup(layout) error { return nil }

// maxPointerSize caps what is read of a pointer file: it holds one short
// relative path.
const maxPointerSize = 4096

// pointerText is the content of a pointer file naming version directory
// name: the same relative path a symlink holds, with forward slashes
// (which Windows accepts), and a line end.
func pointerText(name string) []byte {
	return []byte(stateDirName + "/" + versionsDirName + "/" + name + "/" + filesDirName + "\n")
}

// readLink returns the version directory name that link (current or
// previous) points to, whichever switcher wrote it: a symlink, or a
// pointer file. A missing link is fs.ErrNotExist; anything else than a
// symlink or pointer into .dpcache/versions is ErrBrokenInstall.
func (l layout) readLink(link string) (string, error) {
	p := l.linkPath(link)
	fi, err := os.Lstat(p)
	if err != nil {
		return "", err
	}
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		target, err := os.Readlink(p)
		if err != nil {
			return "", fmt.Errorf("read link %s: %w", p, err)
		}
		name, ok := parseLinkTarget(target)
		if !ok {
			return "", fmt.Errorf("%s points to %q, not to a version under %s/%s: %w",
				p, target, stateDirName, versionsDirName, ErrBrokenInstall)
		}
		return name, nil
	case fi.Mode().IsRegular():
		target, err := readPointer(p)
		if err != nil {
			return "", err
		}
		name, ok := parseLinkTarget(target)
		if !ok {
			return "", fmt.Errorf("%s is neither a symlink nor a pointer file made by dpcache; move it away and run the update again: %w",
				p, ErrBrokenInstall)
		}
		return name, nil
	default:
		return "", fmt.Errorf("%s is not a link made by dpcache (it is a %s); move it away and run the update again: %w",
			p, fileKind(fi), ErrBrokenInstall)
	}
}

// parseLinkTarget returns the version directory name of a link's target,
// .dpcache/versions/<name>/files. Backslashes count as separators: a
// pointer written by hand on Windows, or a symlink made there, has them.
func parseLinkTarget(target string) (string, bool) {
	parts := strings.Split(path.Clean(strings.ReplaceAll(target, `\`, "/")), "/")
	if len(parts) != 4 || parts[0] != stateDirName || parts[1] != versionsDirName ||
		parts[3] != filesDirName || !validVersionDir(parts[2]) {
		return "", false
	}
	return parts[2], true
}

// readPointer returns the path a pointer file holds: its one line.
func readPointer(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", &localError{fmt.Errorf("read %s: %w", p, err)}
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxPointerSize+1))
	if err != nil {
		return "", &localError{fmt.Errorf("read %s: %w", p, err)}
	}
	if len(b) > maxPointerSize {
		return "", fmt.Errorf("%s is not a pointer made by dpcache (over %d bytes); move it away and run the update again: %w",
			p, maxPointerSize, ErrBrokenInstall)
	}
	return strings.TrimSpace(string(b)), nil
}

// isLink reports whether p is a link a switcher made, or looks like one
// enough to be replaced: a symlink, or a file that reads as a pointer
// (its version may be gone). Anything else is the admin's.
func (l layout) isLink(link string) bool {
	if isSymlink(l.linkPath(link)) {
		return true
	}
	_, err := l.readLink(link)
	return err == nil
}
