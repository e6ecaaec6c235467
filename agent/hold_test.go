package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/dpcache/dpcache/source"
)

// A held product is reported as held, with the version held, under the
// id kept in the install root; the host name is reported beside it.
func TestUpdate_HeldReported(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	r.publish(t, "1.0", 0, v1Files)
	dp := &reportingSource{Source: source.NewFile(r.dir)}
	cfg := testConfig(t, r.trust, dp)
	cfg.Hostname = "pc-042"
	mustUpdate(t, cfg)
	r.publish(t, "2.0", 0, v2Files)
	mustUpdate(t, cfg)
	if _, err := Rollback(cfg.Dir, product); err != nil {
		t.Fatal(err)
	}
	if res := mustUpdate(t, cfg); res.Status != StatusHeld || res.Version != "1.0" {
		t.Fatalf("update = %+v, want held at 1.0", *res)
	}
	st := dp.last(t)
	if st.Result != StatusHeld || st.Version != "1.0" || st.Serial != 1 || st.Hostname != "pc-042" {
		t.Errorf("report = %+v, want held at 1.0 serial 1 from pc-042", st)
	}
	id, err := EndpointID(cfg.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if st.ID != id {
		t.Errorf("reported id %q, want the one kept in the install root, %q", st.ID, id)
	}
}

// The endpoint id is generated once per install root and kept there;
// concurrent first runs agree on one; two roots are two endpoints; --id
// (Config.EndpointID) overrides it.
func TestEndpointID(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "not-yet")
	ids := make([]string, 8)
	var wg sync.WaitGroup
	for i := range ids {
		wg.Go(func() {
			id, err := EndpointID(dir)
			if err != nil {
				t.Error(err)
			}
			ids[i] = id
		})
	}
	wg.Wait()
	if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(ids[0]) {
		t.Fatalf("id %q: want 128 bits in hex", ids[0])
	}
	for _, id := range ids {
		if id != ids[0] {
			t.Fatalf("concurrent first runs got ids %v, want one", ids)
		}
	}
	if again, _ := EndpointID(dir); again != ids[0] {
		t.Errorf("id changed: %q, then %q", ids[0], again)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 || entries[0].Name() != EndpointIDFileName {
		t.Errorf("install root holds %v, want only %s", entries, EndpointIDFileName)
	}
	if other, _ := EndpointID(t.TempDir()); other == ids[0] || other == "" {
		t.Errorf("another install root has id %q", other)
	}

	// An id the admin wrote is used; one a DP would refuse is an error
	// that says what to do.
	mine := t.TempDir()
	os.WriteFile(filepath.Join(mine, EndpointIDFileName), []byte("kiosk-7 \n"), 0o644)
	if id, err := EndpointID(mine); err != nil || id != "kiosk-7" {
		t.Errorf("admin's id: %q, %v", id, err)
	}
	os.WriteFile(filepath.Join(mine, EndpointIDFileName), []byte("a/b\x07"), 0o644)
	if _, err := EndpointID(mine); !errors.Is(err, ErrBadEndpointID) || !strings.Contains(err.Error(), "remove the file") {
		t.Errorf("bad id: %v", err)
	}

	// An override is reported as is, and no id file is made.
	r := newRepo(t)
	r.publish(t, "1.0", 0, v1Files)
	dp := &reportingSource{Source: source.NewFile(r.dir)}
	cfg := testConfig(t, r.trust, dp)
	cfg.EndpointID = "given"
	mustUpdate(t, cfg)
	if st := dp.last(t); st.ID != "given" {
		t.Errorf("reported id %q, want the override", st.ID)
	}
	if _, err := os.Stat(filepath.Join(cfg.Dir, EndpointIDFileName)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("id file made despite the override: %v", err)
	}
}

// oneShotWatcher is a source that announces one document, then nothing
// until the watch ends.
type oneShotWatcher struct {
	source.Source
	doc source.Signed
}

func (w oneShotWatcher) WatchLatest(ctx context.Context, _ string) (<-chan source.Signed, func() error, error) {
	ch := make(chan source.Signed, 1)
	ch <- w.doc
	done := make(chan struct{})
	go func() {
		<-ctx.Done()
		close(ch)
		close(done)
	}()
	return ch, func() error { <-done; return ctx.Err() }, nil
}

// `update --watch` keeps running while held: an announcement of a newer
// version installs nothing and is answered held.
func TestWatch_Held(t *testing.T) {
	t.Parallel()
	cfg, _, r := rolledToV1(t)
	if _, err := Rollback(cfg.Dir, product); err != nil {
		t.Fatal(err)
	}
	doc, err := source.NewFile(r.dir).Latest(testCtx(t), product)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	results := make(chan *Result, 1)
	cfg.Sources = []source.Source{oneShotWatcher{Source: cfg.Sources[0], doc: doc}}
	err = Watch(ctx, cfg, WatchConfig{Result: func(res *Result, err error) {
		if err != nil {
			t.Errorf("watch update: %v", err)
		}
		results <- res
		cancel()
	}})
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	select {
	case res := <-results:
		if res == nil || res.Status != StatusHeld || res.Version != "1.0" {
			t.Errorf("watch result = %+v, want held at 1.0", res)
		}
	default:
		t.Fatal("the announcement was not acted on")
	}
	assertTree(t, current(t, cfg), v1Files)
}
