//go:build !windows

package agent

import (
	"errors"
	"syscall"
)

// diskFull reports whether err is a full disk.
func diskFull(err error) bool { return errors.Is(err, syscall.ENOSPC) }

func newSystemSwitcher() switcher { return symlinkSwitch{} }
