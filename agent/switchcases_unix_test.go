//go:build unix

package agent

import (
	"os"
	"testing"
)

// switchCases are the switchers a test on this system runs: the real Unix
// one, and the Windows logic over a file system keeping Windows' rules.
func switchCases() []switchCase {
	return []switchCase{
		{name: "symlink", windows: false, new: func(t *testing.T) (switcher, opener) {
			return symlinkSwitch{}, osOpener(t)
		}},
		fakeWindowsCase(),
	}
}

// osOpener opens files for real; on Unix that stops no removal.
func osOpener(t *testing.T) opener {
	return func(path string) func() {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		return func() { f.Close() }
	}
}
