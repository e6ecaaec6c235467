package agent

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/dpcache/dpcache/source"
)

// fakeDP is a source that announces versions: its documents and blobs
// come from a folder, its announcements from the test.
type fakeDP struct {
	source.Source
	name string
	// up says whether the DP answers; down DPs refuse WatchLatest.
	up func() bool
	// announce returns what the DP would announce now.
	announce func() (source.Signed, bool)
	// calls records each WatchLatest, by name, shared by every fakeDP of
	// a test.
	calls *watchCalls
}

type watchCalls struct {
	mu    sync.Mutex // protects names
	names []string
}

func (c *watchCalls) add(name string) {
	c.mu.Lock()
	c.names = append(c.names, name)
	c.mu.Unlock()
}

func (c *watchCalls) get() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.names)
}

func (d *fakeDP) String() string { return d.name }

// WatchLatest announces the repository's latest.json, at once and on
// every change, until ctx ends or the DP goes down.
func (d *fakeDP) WatchLatest(ctx context.Context, product string) (<-chan source.Signed, func() error, error) {
	d.calls.add(d.name)
	if !d.up() {
		return nil, nil, fmt.Errorf("%s: connection refused: %w", d.name, source.ErrUnavailable)
	}
	out := make(chan source.Signed)
	done := make(chan struct{})
	var err error
	go func() {
		defer close(done)
		defer close(out)
		var last []byte
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			if !d.up() {
				err = fmt.Errorf("%s: stream broken: %w", d.name, source.ErrUnavailable)
				return
			}
			if s, ok := d.announce(); ok && !bytes.Equal(s.Data, last) {
				select {
				case out <- s:
					last = s.Data
				case <-ctx.Done():
					return
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return out, func() error { <-done; return err }, nil
}

// downSource is a source whose every request fails (a DP that is down).
type downSource struct{ source.Source }

func (downSource) Latest(context.Context, string) (source.Signed, error) {
	return source.Signed{}, fmt.Errorf("down: %w", source.ErrUnavailable)
}

func latestOf(t testing.TB, r *repo) func() (source.Signed, bool) {
	return func() (source.Signed, bool) {
		data, err := os.ReadFile(filepath.Join(r.dir, product, "latest.json"))
		if err != nil {
			t.Error(err)
			return source.Signed{}, false
		}
		sig, err := os.ReadFile(filepath.Join(r.dir, product, "latest.json.minisig"))
		if err != nil {
			t.Error(err)
			return source.Signed{}, false
		}
		return source.Signed{Data: data, Signature: sig}, true
	}
}

// waitInstalled polls until cfg's install directory holds serial.
func waitInstalled(t *testing.T, cfg Config, serial uint64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		m, err := Installed(cfg.Dir, cfg.Product)
		if err == nil && m.Serial == serial {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("serial %d not installed: %v, %v", serial, m, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// runWatch runs Watch until the test ends and checks it returned nil.
func runWatch(t *testing.T, cfg Config, wc WatchConfig) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Watch(ctx, cfg, wc) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Watch: %v", err)
		}
	})
}

// A watcher whose DP goes down moves to the next DP of its sources, in
// order, and installs what that one announces; a DP that refuses the watch
// at start is skipped the same way.
func TestWatch_FailsOverToNextDP(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	r.publish(t, "1", 1, map[string]string{"databases/a.dat": "one"})
	var mu sync.Mutex
	alive := map[string]bool{"dp-1": true, "dp-2": false, "dp-3": true}
	up := func(name string) func() bool {
		return func() bool { mu.Lock(); defer mu.Unlock(); return alive[name] }
	}
	calls := &watchCalls{}
	var dps []source.Source
	for _, name := range []string{"dp-1", "dp-2", "dp-3"} {
		dps = append(dps, &fakeDP{Source: source.NewFile(r.dir), name: name, up: up(name), announce: latestOf(t, r), calls: calls})
	}
	cfg := testConfig(t, r.trust, dps...)
	var results []string
	var rmu sync.Mutex
	runWatch(t, cfg, WatchConfig{Retry: 10 * time.Millisecond, Poll: time.Hour, Result: func(res *Result, err error) {
		rmu.Lock()
		defer rmu.Unlock()
		results = append(results, fmt.Sprint(res, err))
	}})
	waitInstalled(t, cfg, 1)

	mu.Lock()
	alive["dp-1"] = false
	mu.Unlock()
	r.publish(t, "2", 2, map[string]string{"databases/a.dat": "two"})
	waitInstalled(t, cfg, 2)
	got := calls.get()
	if want := []string{"dp-1", "dp-2", "dp-3"}; !slices.Equal(got[:min(len(got), 3)], want) {
		t.Fatalf("watched %v, want %v first (dp-1 until it went down, dp-2 refused, then dp-3)", got, want)
	}
	// The update's result is reported just after it installed: wait for it.
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		rmu.Lock()
		n := len(results)
		rmu.Unlock()
		if n >= 2 || time.Now().After(deadline) {
			break
		}
	}
	rmu.Lock()
	defer rmu.Unlock()
	if len(results) != 2 {
		t.Errorf("results %v, want two updates", results)
	}
}

// When every DP is down the watcher tries them in turn from the first,
// and its poll installs from the other sources meanwhile.
func TestWatch_AllDownPolls(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	r.publish(t, "1", 1, map[string]string{"databases/a.dat": "one"})
	calls := &watchCalls{}
	down := func() bool { return false }
	dp1 := &fakeDP{Source: downSource{source.NewFile(r.dir)}, name: "dp-1", calls: calls, announce: latestOf(t, r), up: down}
	dp2 := &fakeDP{Source: downSource{source.NewFile(r.dir)}, name: "dp-2", calls: calls, announce: latestOf(t, r), up: down}
	cfg := testConfig(t, r.trust, dp1, dp2, source.NewFile(r.dir))
	runWatch(t, cfg, WatchConfig{Retry: 20 * time.Millisecond, Poll: 50 * time.Millisecond})
	waitInstalled(t, cfg, 1) // by a poll: no DP announces

	got := calls.get()
	if len(got) < 2 {
		t.Fatalf("watch attempts %v: want dp-1, dp-2 in turn", got)
	}
	for i, name := range got {
		if want := []string{"dp-1", "dp-2"}[i%2]; name != want {
			t.Fatalf("watch attempts %v: want dp-1, dp-2 in turn", got)
		}
	}
}

// A watcher on a later DP goes back to the first (the nearest) at its
// poll once the first answers again.
func TestWatch_PollReturnsToFirstDP(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	r.publish(t, "1", 1, map[string]string{"databases/a.dat": "one"})
	var mu sync.Mutex
	firstUp := false
	calls := &watchCalls{}
	dp1 := &fakeDP{Source: source.NewFile(r.dir), name: "dp-1", calls: calls, announce: latestOf(t, r),
		up: func() bool { mu.Lock(); defer mu.Unlock(); return firstUp }}
	dp2 := &fakeDP{Source: source.NewFile(r.dir), name: "dp-2", calls: calls, announce: latestOf(t, r),
		up: func() bool { return true }}
	cfg := testConfig(t, r.trust, dp1, dp2)
	runWatch(t, cfg, WatchConfig{Retry: time.Hour, Poll: 50 * time.Millisecond})
	waitInstalled(t, cfg, 1) // announced by dp-2

	mu.Lock()
	firstUp = true
	mu.Unlock()
	deadline := time.Now().Add(20 * time.Second)
	for {
		got := calls.get()
		if got[len(got)-1] == "dp-1" && slices.Contains(got, "dp-2") {
			time.Sleep(200 * time.Millisecond) // four polls: it stays on dp-1
			if again := calls.get(); len(again) != len(got) {
				t.Fatalf("watch attempts %v then %v: want it to stay on dp-1", got, again)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("watch attempts %v: want dp-1 again once it is back", got)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
