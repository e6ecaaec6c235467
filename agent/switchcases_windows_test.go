package agent

import (
	"os"
	"testing"
)

// switchCases are the switchers a test on this system runs: the real
// Windows one, and the same logic over the fake that stands in for it on
// Linux (so that the two are seen to agree).
func switchCases() []switchCase {
	return []switchCase{
		{name: "pointer", windows: true, new: func(t *testing.T) (switcher, opener) {
			return newPointerSwitch(osWinFS{}), osOpener(t)
		}},
		fakeWindowsCase(),
	}
}

// osOpener opens files for real; on Windows that stops their removal.
func osOpener(t *testing.T) opener {
	return func(path string) func() {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		return func() { f.Close() }
	}
}
