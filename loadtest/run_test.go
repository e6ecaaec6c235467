package loadtest

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/source"
)

// repo is a published product: v1, then v2 with one file changed.
type repo struct {
	dir     string
	trust   *manifest.Trust
	changed manifest.File // the file of v2 that v1 lacks
	total   int64         // the bytes of v2
}

func newRepo(t *testing.T) *repo {
	t.Helper()
	dir := t.TempDir()
	key, pub, err := manifest.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	trust, err := manifest.NewTrust(pub)
	if err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(dir, "src")
	write := func(name string, b byte, n int) {
		if err := os.MkdirAll(src, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(src, name), bytes.Repeat([]byte{b}, n), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	r := &repo{dir: filepath.Join(dir, "repo"), trust: trust}
	publish := func(version string) *manifest.Manifest {
		res, err := manifest.Publish(manifest.PublishOptions{Repo: r.dir, Product: "av", Version: version, Key: key}, src)
		if err != nil {
			t.Fatal(err)
		}
		return res.Manifest
	}
	write("same.dat", 'a', 3000)
	write("changed.dat", 'b', 5000)
	publish("v1")
	write("changed.dat", 'c', 7000)
	for _, f := range publish("v2").Files {
		r.total += f.Size
		if f.Path == "changed.dat" {
			r.changed = f
		}
	}
	return r
}

// fileConn is a simulated endpoint's connection: the repository folder as
// a source, and reports kept for the test.
type fileConn struct {
	source.Source
	reports *reports
}

type reports struct {
	mu   sync.Mutex
	byID map[string]source.Status
}

func (c fileConn) ReportStatus(_ context.Context, st source.Status) error {
	c.reports.mu.Lock()
	defer c.reports.mu.Unlock()
	c.reports.byID[st.ID] = st
	return nil
}

func (r *repo) dialer(rep *reports) Dialer {
	return func() (Conn, error) { return fileConn{Source: source.NewFile(r.dir), reports: rep}, nil }
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestRun_ChangedFilesOnly(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	rep := &reports{byID: map[string]source.Status{}}
	cfg := DefaultConfig()
	cfg.Product, cfg.From, cfg.Endpoints, cfg.Concurrency = "av", "v1", 40, 7
	cfg.Trust, cfg.Verify = r.trust, true
	sum, err := Run(testCtx(t), cfg, r.dialer(rep))
	if err != nil {
		t.Fatal(err)
	}
	if sum.Endpoints != 40 || sum.Updated != 40 || sum.Errors != 0 {
		t.Fatalf("endpoints %d updated %d errors %d %v, want 40 40 0", sum.Endpoints, sum.Updated, sum.Errors, sum.ErrorKinds)
	}
	if sum.Version != "v2" || sum.BlobsPerEndpoint != 1 || sum.BytesPerEndpoint != r.changed.Size {
		t.Errorf("plan: %s, %d blobs, %d bytes each; want v2, 1 blob, %d bytes (the changed file only)", sum.Version, sum.BlobsPerEndpoint, sum.BytesPerEndpoint, r.changed.Size)
	}
	if sum.Bytes != 40*r.changed.Size {
		t.Errorf("moved %d bytes, want %d (40 × the changed file)", sum.Bytes, 40*r.changed.Size)
	}
	if sum.P50 <= 0 || sum.P99 < sum.P50 || sum.FirstP99 <= 0 || sum.FirstP99 > sum.Max {
		t.Errorf("times p50 %v p99 %v max %v first p99 %v: want 0 < p50 <= p99, 0 < first p99 <= max", sum.P50, sum.P99, sum.Max, sum.FirstP99)
	}
	if len(rep.byID) != 40 {
		t.Fatalf("%d distinct ids reported, want 40", len(rep.byID))
	}
	for id, st := range rep.byID {
		if st.Version != "v2" || st.Serial != 2 || st.Result != "updated" || st.Product != "av" {
			t.Errorf("report of %s: %+v, want av v2 serial 2 updated", id, st)
		}
	}
	if _, ok := rep.byID["loadtest-01"]; !ok {
		t.Errorf("no report from loadtest-01 (ids are the prefix and a zero-padded number)")
	}
}

func TestRun_FreshInstall(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	rep := &reports{byID: map[string]source.Status{}}
	cfg := DefaultConfig()
	cfg.Product, cfg.Endpoints, cfg.Concurrency, cfg.ID = "av", 5, 5, "one-cert"
	sum, err := Run(testCtx(t), cfg, r.dialer(rep))
	if err != nil {
		t.Fatal(err)
	}
	if sum.Updated != 5 || sum.BlobsPerEndpoint != 2 || sum.Bytes != 5*r.total {
		t.Errorf("updated %d, %d blobs each, %d bytes; want 5, 2, %d (every file)", sum.Updated, sum.BlobsPerEndpoint, sum.Bytes, 5*r.total)
	}
	if len(rep.byID) != 1 {
		t.Errorf("reports under %d ids, want 1 (Config.ID)", len(rep.byID))
	}
}

// A blob corrupted on the source: with Verify every endpoint fails at
// ReadBlob with the digest kind; the run itself succeeds.
func TestRun_Verify_CorruptBlob(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	blob := filepath.Join(r.dir, filepath.FromSlash(manifest.BlobPath(r.changed.SHA256)))
	if err := os.WriteFile(blob, bytes.Repeat([]byte{'x'}, int(r.changed.Size)), 0o644); err != nil {
		t.Fatal(err)
	}
	rep := &reports{byID: map[string]source.Status{}}
	cfg := DefaultConfig()
	cfg.Product, cfg.From, cfg.Endpoints, cfg.Concurrency, cfg.Verify = "av", "v1", 6, 3, true
	sum, err := Run(testCtx(t), cfg, r.dialer(rep))
	if err != nil {
		t.Fatal(err)
	}
	if sum.Updated != 0 || sum.Errors != 6 || len(sum.ErrorKinds) != 1 || sum.ErrorKinds[0].Kind != "ReadBlob: digest" {
		t.Errorf("updated %d errors %d kinds %+v, want 0, 6, ReadBlob: digest", sum.Updated, sum.Errors, sum.ErrorKinds)
	}
	if len(rep.byID) != 0 {
		t.Errorf("%d reports after failed updates, want none", len(rep.byID))
	}
}

func TestRun_Setup_UnknownFrom(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	cfg := DefaultConfig()
	cfg.Product, cfg.From = "av", "v0"
	if _, err := Run(testCtx(t), cfg, r.dialer(&reports{byID: map[string]source.Status{}})); err == nil || !errorsIs(err, ErrSetup, source.ErrNotFound) {
		t.Errorf("Run from an unknown version: %v, want ErrSetup and ErrNotFound", err)
	}
}

func errorsIs(err error, targets ...error) bool {
	for _, t := range targets {
		if !errors.Is(err, t) {
			return false
		}
	}
	return true
}
