package main

import (
	"math"
	"runtime/debug"
	"testing"
)

// node --memory-limit sets the runtime's soft limit: the default, the
// flag's value, none for 0; GOMEMLIMIT wins over the default only.
func TestApplyMemoryLimit(t *testing.T) {
	old := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(old) })
	t.Setenv("GOMEMLIMIT", "")
	for _, tc := range []struct {
		name  string
		env   string
		given bool
		limit int64
		want  int64
	}{
		{"default", "", false, defaultMemoryLimit, defaultMemoryLimit},
		{"flag", "", true, 512 << 20, 512 << 20},
		{"flag 0: no limit", "", true, 0, math.MaxInt64},
		{"GOMEMLIMIT over the default", "1GiB", false, defaultMemoryLimit, 777},
		{"flag over GOMEMLIMIT", "1GiB", true, 300 << 20, 300 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("GOMEMLIMIT", tc.env)
			debug.SetMemoryLimit(777) // as if the runtime had read GOMEMLIMIT
			applyMemoryLimit(tc.given, tc.limit)
			if got := debug.SetMemoryLimit(-1); got != tc.want {
				t.Errorf("limit %d, want %d", got, tc.want)
			}
		})
	}
}
