package main

import (
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/dpcache/dpcache/agent"
	"github.com/dpcache/dpcache/source"
)

// The speed shown is done over elapsed: bytes this run transferred, so a
// resumed or reused file never shows as arriving at once.
func TestFormatProgress(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		done, total int64
		elapsed     time.Duration
		want        string
	}{
		{0, 0, 0, "dl 100% 0 B / 0 B"},
		{0, 10 << 20, 0, "dl   0% 0 B / 10.0 MiB"},
		{5 << 20, 10 << 20, 500 * time.Millisecond, "dl  50% 5.0 MiB / 10.0 MiB"}, // too early for a speed
		{5 << 20, 10 << 20, 2 * time.Second, "dl  50% 5.0 MiB / 10.0 MiB  2.5 MiB/s"},
		{10 << 20, 10 << 20, 4 * time.Second, "dl 100% 10.0 MiB / 10.0 MiB  2.5 MiB/s"},
		{11 << 20, 10 << 20, 4 * time.Second, "dl 100% 11.0 MiB / 10.0 MiB  2.8 MiB/s"},
	} {
		if got := formatProgress("dl", tc.done, tc.total, tc.elapsed); got != tc.want {
			t.Errorf("formatProgress(%d, %d, %v) = %q, want %q", tc.done, tc.total, tc.elapsed, got, tc.want)
		}
	}
}

func TestOneLine(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ err, want string }{
		{"update: update av in /x: av/latest.json: not found", "update av in /x: av/latest.json: not found"},
		{"keygen: keygen: open k.key: no such file", "keygen: open k.key: no such file"},
		{"dpcache: unknown flag: --x", "unknown flag: --x"},
		{"node: config:\nsite: bad\nname: empty", "node: config: site: bad; name: empty"},
		{"update: updated files are kept", "update: updated files are kept"},
	} {
		if got := oneLine(errors.New(tc.err)); got != tc.want {
			t.Errorf("oneLine(%q) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

func TestExitCode(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err  error
		want int
	}{
		{errors.New("update: disk full"), exitFailure},
		{usageError(errors.New("update: missing --dir")), exitUsage},
		{fmt.Errorf("update: %w", usageError(errors.New("--proxy"))), exitUsage},
		{&exitError{exitStale, errors.New("stale")}, exitStale},
		{errors.New(`unknown command "frob" for "dpcache"`), exitUsage},
		{fmt.Errorf("update: %w: gopher", source.ErrBadURL), exitUsage},
		{fmt.Errorf("update: %w", agent.ErrInvalidConfig), exitUsage},
	} {
		if got := exitCode(tc.err); got != tc.want {
			t.Errorf("exitCode(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}

// Stamped values win; the build information fills in what is missing.
func TestBuildVersion(t *testing.T) {
	t.Parallel()
	info := &debug.BuildInfo{GoVersion: "go1.99", Main: debug.Module{Version: "v1.4.0"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "0123456789abcdef0123"}, {Key: "vcs.modified", Value: "true"},
	}}
	if got, want := buildVersion("", "", info, true), (versionInfo{Version: "v1.4.0", Commit: "0123456789ab", Modified: true, Go: "go1.99"}); got != want {
		t.Errorf("from build info: %+v, want %+v", got, want)
	}
	if got := buildVersion("2.0.0", "abc1234", info, true); got.Version != "2.0.0" || got.Commit != "abc1234" {
		t.Errorf("stamped: %+v, want version 2.0.0 commit abc1234", got)
	}
	got := buildVersion("", "", nil, false)
	if got.Version != "(devel)" || got.Commit != "unknown" || !strings.HasPrefix(got.Go, "go") {
		t.Errorf("without build info: %+v", got)
	}
}
