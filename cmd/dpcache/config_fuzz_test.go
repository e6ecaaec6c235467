package main

import (
	"testing"
)

// FuzzNodeConfig: any YAML file given to `node --config` either sets flags
// or is refused with an error; never a panic.
func FuzzNodeConfig(f *testing.F) {
	f.Add([]byte("name: dp-1\nsite: branch\nupstream: [http://a/, /mnt/share]\nrefresh: 30s\n"))
	f.Add([]byte("cache-max: 50GiB\nkeep-versions: 3\n"))
	f.Add([]byte("unknown: 1\n"))
	f.Add([]byte("a: &a [*a, *a]\n"))
	f.Add([]byte("name: [1, {x: y}]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cmd := newNode()
		applyConfigData(cmd.Flags(), "fuzz.yaml", data) //nolint:errcheck // only: no panic
	})
}
