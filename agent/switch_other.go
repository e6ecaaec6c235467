//go:build !windows

package agent

func newSystemSwitcher() switcher { return symlinkSwitch{} }
