package agent

import (
	"errors"
	"testing"
	"time"

	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/source"
)

// publishExpired publishes files as version in r with a latest.json that
// expired a day ago (published two days ago, valid for a day).
func (r *repo) publishExpired(t testing.TB, version string, files map[string]string) {
	t.Helper()
	past := time.Now().Add(-48 * time.Hour)
	r.publishWith(t, manifest.PublishOptions{Version: version, Expires: 24 * time.Hour, Now: func() time.Time { return past }}, files)
}

// TestUpdate_StaleSourceSkipped: a source whose latest.json has expired is
// stale: the next source, current, serves, and the run is "updated".
func TestUpdate_StaleSourceSkipped(t *testing.T) {
	t.Parallel()
	frozen := newRepo(t)
	frozen.publishExpired(t, "1.0", v1Files)
	fresh := frozen.sameKeyRepo(t)
	fresh.publish(t, "1.0", 0, v1Files)
	cfg := testConfig(t, frozen.trust, source.NewFile(frozen.dir), source.NewFile(fresh.dir))
	res := mustUpdate(t, cfg)
	if res.Status != StatusUpdated || res.Source != cfg.Sources[1].String() {
		t.Errorf("update = %+v, want updated from the current source %s", res, cfg.Sources[1])
	}
}

// TestUpdate_EverySourceStale: when every source offers an expired
// latest.json, a version newer than the installed one still installs (an
// air-gapped site updating from a mirror), but the status is "stale"; a
// run with nothing newer is "stale" too, installing nothing.
func TestUpdate_EverySourceStale(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	r.publish(t, "1.0", 0, v1Files)
	cfg := testConfig(t, r.trust, source.NewFile(r.dir))
	mustUpdate(t, cfg)

	v2 := map[string]string{"db/a.bin": "database A version 2"}
	r.publishExpired(t, "2.0", v2)
	other := r.sameKeyRepo(t)
	other.publishExpired(t, "1.5", v1Files)
	cfg.Sources = []source.Source{source.NewFile(other.dir), source.NewFile(r.dir)}
	res := mustUpdate(t, cfg)
	if res.Status != StatusStale || res.Version != "2.0" || res.Source != cfg.Sources[1].String() {
		t.Errorf("update = %+v, want stale, the newest expired version (2.0) installed from %s", res, cfg.Sources[1])
	}
	assertTree(t, current(t, cfg), v2)

	res = mustUpdate(t, cfg)
	if res.Status != StatusStale || res.Version != "2.0" || res.FilesChanged != 0 {
		t.Errorf("second update = %+v, want stale at 2.0, nothing changed", res)
	}
}

// TestUpdate_StaleNotBelowInstalled: an expired latest.json below the
// installed serial is still a lower serial: refused, never installed.
func TestUpdate_StaleNotBelowInstalled(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	r.publish(t, "1.0", 5, v1Files)
	cfg := testConfig(t, r.trust, source.NewFile(r.dir))
	mustUpdate(t, cfg)
	old := r.sameKeyRepo(t)
	old.publishExpired(t, "0.9", map[string]string{"db/a.bin": "old"})
	cfg.Sources = []source.Source{source.NewFile(old.dir)}
	if _, err := Update(testCtx(t), cfg); !errors.Is(err, ErrLowerSerial) {
		t.Fatalf("Update from a stale source below the installed serial = %v, want ErrLowerSerial", err)
	}
	assertTree(t, current(t, cfg), v1Files)
}
