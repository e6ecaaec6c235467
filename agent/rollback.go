package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/dpcache/dpcache/manifest"
)

// Rollback switches dir/<product>/current back to the previous version
// kept on disk and holds the product there: Update installs nothing (its
// status is StatusHeld) until Unhold. It is the only way to a lower
// serial: an admin's decision. The version rolled back from stays on disk
// as previous, so that after Unhold the next Update reuses its files.
//
// It returns ErrHeld when the product is held already (nothing older is
// kept), ErrNoPrevious when no previous version is kept (nothing was ever
// updated, or the previous one is damaged), ErrNotInstalled when nothing
// is installed, ErrBusy when an update is running.
//
// The hold is written (atomically, durably) before any link moves, and
// each link switch is atomic: a crash at any moment leaves the product
// on the newer version and not held, or held, and whoever takes the
// product's lock next (Update, Rollback, Unhold) finishes the switch the
// hold records. The returned Result has Status StatusRolledBack and no
// Source.
func Rollback(dir, product string) (*Result, error) {
	if err := manifest.ValidName(product); err != nil {
		return nil, fmt.Errorf("rollback: product: %w", err)
	}
	l := newLayout(dir, product)
	res, err := rollback(l, product)
	if err != nil {
		return nil, fmt.Errorf("rollback %s%s: %w", product, where(" in ", dir, err), err)
	}
	return res, nil
}

func rollback(l layout, product string) (*Result, error) {
	h, unlock, err := l.lockHold()
	if unlock != nil {
		defer unlock()
	}
	if err != nil {
		return nil, err
	}
	if h != nil {
		// Held already; or a rollback that a crash interrupted, which
		// this one finishes.
		changed, err := l.settleHold(h)
		if err != nil {
			return nil, err
		}
		if !changed {
			return nil, fmt.Errorf("%w at %s (serial %d) after a rollback, and nothing older is kept; `dpcache unhold --dir %s --product %s` releases it",
				ErrHeld, h.Version, h.Serial, filepath.Dir(l.root), product)
		}
		return rolledBack(l, product)
	}
	cur, err := l.linked(currentName)
	if err != nil {
		return nil, err
	}
	prev, err := l.linked(previousName)
	if err != nil {
		if errors.Is(err, ErrNoPrevious) {
			return nil, fmt.Errorf("%s: %w (only %s serial %d is on disk)", l.root, ErrNoPrevious, cur.man.Version, cur.man.Serial)
		}
		return nil, fmt.Errorf("%w: %w", ErrNoPrevious, err)
	}
	if prev.name == cur.name {
		return nil, fmt.Errorf("%s: %w (previous is current, %s serial %d)", l.root, ErrNoPrevious, cur.man.Version, cur.man.Serial)
	}
	// The hold first: it is the journal of the switch (see settleHold).
	// Then current: should a crash follow, the version left behind is the
	// one at risk of cleanup, not the one rolled back to.
	if err := l.writeHold(&holdRecord{
		Version: prev.man.Version, Serial: prev.man.Serial, Since: time.Now().UTC(),
		Name: prev.name, From: cur.name,
	}); err != nil {
		return nil, err
	}
	if err := l.setLink(currentName, prev.name); err != nil {
		return nil, err
	}
	if err := l.setLink(previousName, cur.name); err != nil {
		return nil, err
	}
	return &Result{
		Product:      product,
		Version:      prev.man.Version,
		Serial:       prev.man.Serial,
		Status:       StatusRolledBack,
		FilesChanged: countChanges(cur.files, prev.files),
	}, nil
}

// rolledBack is the Result of a rollback that settleHold finished.
func rolledBack(l layout, product string) (*Result, error) {
	cur, err := l.linked(currentName)
	if err != nil {
		return nil, err
	}
	res := &Result{Product: product, Version: cur.man.Version, Serial: cur.man.Serial, Status: StatusRolledBack}
	if prev, err := l.linked(previousName); err == nil {
		res.FilesChanged = countChanges(prev.files, cur.files)
	}
	return res, nil
}

// Installed returns the manifest of what dir/<product>/current holds, with
// Files limited to the components installed. It reads without locking, so
// it may run during an update (it sees the old or the new version). It
// returns ErrNotInstalled when nothing is installed, ErrBrokenInstall when
// current is not a version the agent installed.
func Installed(dir, product string) (*manifest.Manifest, error) {
	if err := manifest.ValidName(product); err != nil {
		return nil, fmt.Errorf("installed: product: %w", err)
	}
	v, err := newLayout(dir, product).linked(currentName)
	if err != nil {
		return nil, fmt.Errorf("installed %s in %s: %w", product, dir, err)
	}
	m := *v.man
	m.Files = v.files
	return &m, nil
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}
