package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/dpcache/dpcache/manifest"
)

// A hold is Dir/<product>/.dpcache/hold.json: Rollback writes it before
// it switches any link, so it is also the journal of the rollback. Whoever
// next takes the lock (Update, Rollback, Unhold) and finds current or
// previous not yet where the hold says finishes the switch, so a crash at
// any moment leaves the product either not held on the newer version, or
// held on the older one, whole.
const holdFileName = "hold.json"

// Hold says that a product is held on a version after a rollback: Update
// installs nothing until Unhold.
type Hold struct {
	// Version and Serial are those of the version held (current).
	Version string
	Serial  uint64
	// Since is when Rollback put the hold.
	Since time.Time
}

// holdRecord is hold.json.
type holdRecord struct {
	Version string    `json:"version"`
	Serial  uint64    `json:"serial"`
	Since   time.Time `json:"since"`
	// Name is the version directory held (current), From the one rolled
	// back from (previous).
	Name string `json:"name"`
	From string `json:"from"`
}

func (h *holdRecord) public() *Hold {
	if h == nil {
		return nil
	}
	return &Hold{Version: h.Version, Serial: h.Serial, Since: h.Since}
}

func (l layout) holdPath() string { return filepath.Join(l.state, holdFileName) }

// readHold returns the hold, nil when the product is not held. A hold
// file that does not parse is ErrBrokenInstall: the product stays held
// (failing safe) until the admin removes the file.
func (l layout) readHold() (*holdRecord, error) {
	b, err := os.ReadFile(l.holdPath())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, &localError{fmt.Errorf("read %s: %w", l.holdPath(), err)}
	}
	var h holdRecord
	if err := json.Unmarshal(b, &h); err != nil || !validVersionDir(h.Name) || !validVersionDir(h.From) ||
		manifest.ValidName(h.Version) != nil {
		return nil, fmt.Errorf("%s is unreadable; remove it to release the hold: %w", l.holdPath(), ErrBrokenInstall)
	}
	return &h, nil
}

// writeHold records h atomically and durably.
func (l layout) writeHold(h *holdRecord) error {
	b, err := json.MarshalIndent(h, "", "  ")
	if err != nil {
		return err
	}
	if err := manifest.WriteFileAtomic(l.holdPath(), append(b, '\n')); err != nil {
		return &localError{err}
	}
	return nil
}

// removeHold deletes the hold durably.
func (l layout) removeHold() error {
	if err := os.Remove(l.holdPath()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return &localError{fmt.Errorf("remove %s: %w", l.holdPath(), err)}
	}
	if err := manifest.SyncDir(l.state); err != nil {
		return &localError{err}
	}
	return nil
}

// settleHold finishes the rollback that h records, should a crash have
// stopped it: current to h.Name, then previous to h.From. It reports
// whether anything had to be done. Call with the lock held.
func (l layout) settleHold(h *holdRecord) (bool, error) {
	if !isDir(l.versionDir(h.Name)) {
		return false, fmt.Errorf("the version held, %s, is no longer on disk (%s); run `dpcache unhold` to release the hold: %w",
			h.Version, l.versionDir(h.Name), ErrBrokenInstall)
	}
	changed := false
	if cur, err := l.readLink(currentName); err != nil || cur != h.Name {
		if err := l.setLink(currentName, h.Name); err != nil {
			return false, err
		}
		changed = true
	}
	if prev, err := l.readLink(previousName); (err != nil || prev != h.From) && isDir(l.versionDir(h.From)) {
		if err := l.setLink(previousName, h.From); err != nil {
			return false, err
		}
		changed = true
	}
	return changed, nil
}

// cleanHoldTemps removes the temporary files of a hold write that a crash
// interrupted.
func (l layout) cleanHoldTemps() error {
	entries, err := os.ReadDir(l.state)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return &localError{fmt.Errorf("list %s: %w", l.state, err)}
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".tmp-"+holdFileName+"-") {
			if err := os.Remove(filepath.Join(l.state, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return &localError{fmt.Errorf("remove %s: %w", filepath.Join(l.state, e.Name()), err)}
			}
		}
	}
	return nil
}

// Held returns the hold of product in dir, or nil when it is not held. It
// reads without locking.
func Held(dir, product string) (*Hold, error) {
	if err := manifest.ValidName(product); err != nil {
		return nil, fmt.Errorf("product: %w", err)
	}
	h, err := newLayout(dir, product).readHold()
	if err != nil {
		return nil, fmt.Errorf("%s in %s: %w", product, dir, err)
	}
	return h.public(), nil
}

// Unhold releases the hold that Rollback put on product in dir, so that
// the next Update installs the newest version again. It returns the hold
// it removed, ErrNotHeld when the product is not held, ErrBusy when an
// update is running.
func Unhold(dir, product string) (*Hold, error) {
	if err := manifest.ValidName(product); err != nil {
		return nil, fmt.Errorf("unhold: product: %w", err)
	}
	l := newLayout(dir, product)
	h, err := unhold(l)
	if err != nil {
		return nil, fmt.Errorf("unhold %s in %s: %w", product, dir, err)
	}
	return h.public(), nil
}

// lockHold takes the product's lock for a command that changes the hold
// (rollback, unhold), clears what an interrupted one left, and reads the
// hold (nil when not held). The caller calls unlock when done, also after
// an error from reading the hold.
func (l layout) lockHold() (h *holdRecord, unlock func(), err error) {
	if !isDir(l.state) {
		return nil, nil, fmt.Errorf("%s: %w", l.root, ErrNotInstalled)
	}
	unlock, err = l.lock()
	if err != nil {
		return nil, nil, err
	}
	if err := l.cleanHoldTemps(); err != nil {
		unlock()
		return nil, nil, err
	}
	h, err = l.readHold()
	return h, unlock, err
}

func unhold(l layout) (*holdRecord, error) {
	h, unlock, err := l.lockHold()
	if unlock != nil {
		defer unlock()
	}
	if err != nil {
		if errors.Is(err, ErrBrokenInstall) {
			// Releasing is what the error advises: do it.
			return &holdRecord{}, l.removeHold()
		}
		return nil, err
	}
	if h == nil {
		return nil, fmt.Errorf("%w; nothing to release", ErrNotHeld)
	}
	// Finish an interrupted rollback first, so that what is released is
	// the version the admin rolled back to, whole.
	if _, err := l.settleHold(h); err != nil && !errors.Is(err, ErrBrokenInstall) {
		return nil, err
	}
	if err := l.removeHold(); err != nil {
		return nil, err
	}
	return h, nil
}
