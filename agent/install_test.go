package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dpcache/dpcache/e2e/testenv"
	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/source"
)

var fixedTime = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

func rm(t testing.TB, p string) {
	t.Helper()
	if err := os.RemoveAll(p); err != nil {
		t.Fatal(err)
	}
}

func copyDir(t testing.TB, from, to string) {
	t.Helper()
	if out, err := exec.Command("cp", "-a", from+"/.", to).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
}

// pseudoRandom returns n incompressible bytes, the same for each n.
func pseudoRandom(n int) string {
	r := rand.New(rand.NewPCG(uint64(n), 42))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return string(b)
}

func newTestLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(&lockedWriter{w: w}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func TestRollback(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	r.publish(t, "1.0", 0, v1Files)
	cfg := testConfig(t, r.trust, source.NewFile(r.dir))

	if _, err := Rollback(cfg.Dir, product); !errors.Is(err, ErrNotInstalled) {
		t.Errorf("rollback before any install: %v, want ErrNotInstalled", err)
	}
	mustUpdate(t, cfg)
	if _, err := Rollback(cfg.Dir, product); !errors.Is(err, ErrNoPrevious) || !strings.Contains(err.Error(), "1.0") {
		t.Errorf("rollback with one version: %v, want ErrNoPrevious", err)
	}
	v2 := map[string]string{"db/a.bin": "two", "db/b.bin": v1Files["db/b.bin"]}
	r.publish(t, "2.0", 0, v2)
	mustUpdate(t, cfg)

	res, err := Rollback(cfg.Dir, product)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Result{Product: product, Version: "1.0", Serial: 1, Status: StatusRolledBack, FilesChanged: 3}); *res != want {
		t.Errorf("rollback result = %+v, want %+v", *res, want)
	}
	assertTree(t, current(t, cfg), v1Files)
	if m, _ := Installed(cfg.Dir, product); m.Serial != 1 {
		t.Errorf("installed serial %d after rollback", m.Serial)
	}
	// Held: a second rollback fails, nothing older is kept.
	_, err = Rollback(cfg.Dir, product)
	if !errors.Is(err, ErrHeld) || !strings.Contains(err.Error(), "1.0") || !strings.Contains(err.Error(), "dpcache unhold") {
		t.Errorf("second rollback: %v, want ErrHeld naming 1.0 and unhold", err)
	}
	assertTree(t, current(t, cfg), v1Files)
	if h, err := Held(cfg.Dir, product); err != nil || h == nil || h.Version != "1.0" || h.Serial != 1 || h.Since.IsZero() {
		t.Errorf("Held = %+v, %v", h, err)
	}

	// Update while held: nothing installed, no source asked, status held.
	res = mustUpdate(t, cfg)
	if want := (Result{Product: product, Version: "1.0", Serial: 1, Status: StatusHeld}); *res != want {
		t.Errorf("update while held = %+v, want %+v", *res, want)
	}
	assertTree(t, current(t, cfg), v1Files)
	assertTree(t, readTree(t, filepath.Join(cfg.Dir, product, previousName)+"/"), v2)

	// Unhold: the next update moves forward again, reusing the files kept
	// on disk.
	if h, err := Unhold(cfg.Dir, product); err != nil || h.Version != "1.0" {
		t.Fatalf("Unhold = %+v, %v", h, err)
	}
	if _, err := Unhold(cfg.Dir, product); !errors.Is(err, ErrNotHeld) {
		t.Errorf("second unhold: %v, want ErrNotHeld", err)
	}
	if h, err := Held(cfg.Dir, product); err != nil || h != nil {
		t.Errorf("Held after unhold = %+v, %v", h, err)
	}
	res = mustUpdate(t, cfg)
	if res.Status != StatusUpdated || res.Version != "2.0" || res.BytesDownloaded != 0 {
		t.Errorf("update after unhold = %+v", *res)
	}
	assertTree(t, current(t, cfg), v2)
	assertTree(t, readTree(t, filepath.Join(cfg.Dir, product, previousName)+"/"), v1Files)
	if res := mustUpdate(t, cfg); res.Status != StatusUpToDate {
		t.Errorf("then: %s", res.Status)
	}
	// A rollback after that holds again.
	if res, err := Rollback(cfg.Dir, product); err != nil || res.Version != "1.0" {
		t.Fatalf("rollback after unhold: %v, %v", res, err)
	}
	if res := mustUpdate(t, cfg); res.Status != StatusHeld {
		t.Errorf("update: %s, want held", res.Status)
	}
}

// rolledToV1 installs 1.0 then 2.0 and returns the config and the layout.
func rolledToV1(t *testing.T) (Config, layout, *repo) {
	t.Helper()
	r := newRepo(t)
	r.publish(t, "1.0", 0, v1Files)
	cfg := testConfig(t, r.trust, source.NewFile(r.dir))
	mustUpdate(t, cfg)
	r.publish(t, "2.0", 0, v2Files)
	mustUpdate(t, cfg)
	return cfg, newLayout(cfg.Dir, product), r
}

var v2Files = map[string]string{"db/a.bin": "two", "db/b.bin": v1Files["db/b.bin"]}

// TestRollback_CrashSafety puts the install directory in each state a
// crash can leave a rollback in (the hold is written first, atomically;
// then current; then previous) and checks that the product is either on
// 2.0 and not held, or held on 1.0 whole, and that the next run (update,
// rollback or unhold) finishes the switch.
func TestRollback_CrashSafety(t *testing.T) {
	t.Parallel()
	rec := func(layout) *holdRecord {
		return &holdRecord{Version: "1.0", Serial: 1, Since: fixedTime, Name: "1.0", From: "2.0"}
	}
	steps := []struct {
		name  string
		crash func(t *testing.T, l layout) // the state the crash leaves
		held  bool
	}{
		{"hold written half (temporary file only)", func(t *testing.T, l layout) {
			if err := os.WriteFile(filepath.Join(l.state, ".tmp-"+holdFileName+"-0123456789abcdef"), []byte(`{"vers`), 0o644); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"hold written, no link moved", func(t *testing.T, l layout) {
			if err := l.writeHold(rec(l)); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"hold written, current moved, previous not", func(t *testing.T, l layout) {
			if err := l.writeHold(rec(l)); err != nil {
				t.Fatal(err)
			}
			if err := l.setLink(currentName, "1.0"); err != nil {
				t.Fatal(err)
			}
		}, true},
	}
	for _, next := range []string{"update", "rollback", "unhold"} {
		for _, st := range steps {
			t.Run(next+" after "+st.name, func(t *testing.T) {
				t.Parallel()
				cfg, l, _ := rolledToV1(t)
				st.crash(t, l)
				var err error
				switch next {
				case "update":
					var res *Result
					res, err = Update(testCtx(t), cfg)
					if err == nil && (res.Status == StatusHeld) != st.held {
						t.Errorf("update = %+v, held %v", *res, st.held)
					}
				case "rollback":
					_, err = Rollback(cfg.Dir, product)
				case "unhold":
					_, err = Unhold(cfg.Dir, product)
					if !st.held {
						if !errors.Is(err, ErrNotHeld) {
							t.Errorf("unhold: %v, want ErrNotHeld", err)
						}
						err = nil
					}
				}
				if err != nil {
					t.Fatalf("%s: %v", next, err)
				}
				entries, _ := os.ReadDir(l.state)
				for _, e := range entries {
					if strings.HasPrefix(e.Name(), ".tmp-") {
						t.Errorf("temporary file %s left", e.Name())
					}
				}
				wantCur, wantPrev := v2Files, v1Files
				heldNow := st.held && next != "unhold" || next == "rollback"
				if st.held || next == "rollback" {
					wantCur, wantPrev = v1Files, v2Files // the switch was finished
				}
				assertTree(t, current(t, cfg), wantCur)
				assertTree(t, readTree(t, filepath.Join(cfg.Dir, product, previousName)+"/"), wantPrev)
				if h, err := Held(cfg.Dir, product); err != nil || (h != nil) != heldNow {
					t.Errorf("held = %+v, %v; want held %v", h, err, heldNow)
				}
				// Then the product moves on as usual: unhold if held,
				// and the next update is at 2.0.
				if heldNow {
					if _, err := Unhold(cfg.Dir, product); err != nil {
						t.Fatal(err)
					}
				}
				if res := mustUpdate(t, cfg); res.Version != "2.0" || res.BytesDownloaded != 0 {
					t.Errorf("update after = %+v", *res)
				}
				assertTree(t, current(t, cfg), v2Files)
			})
		}
	}
}

// A hold file that does not parse keeps the product held (failing safe)
// and says to remove it; unhold removes it.
func TestHold_Unreadable(t *testing.T) {
	t.Parallel()
	cfg, l, _ := rolledToV1(t)
	if _, err := Rollback(cfg.Dir, product); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(l.holdPath(), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Update(testCtx(t), cfg); !errors.Is(err, ErrBrokenInstall) || !strings.Contains(err.Error(), l.holdPath()) {
		t.Errorf("update with a bad hold file: %v", err)
	}
	assertTree(t, current(t, cfg), v1Files)
	if _, err := Unhold(cfg.Dir, product); err != nil {
		t.Fatal(err)
	}
	if res := mustUpdate(t, cfg); res.Version != "2.0" {
		t.Errorf("update after unhold = %+v", *res)
	}
}

// Rollback, Unhold and Update take one lock: none runs while another does.
func TestHold_Busy(t *testing.T) {
	t.Parallel()
	cfg, l, _ := rolledToV1(t)
	if _, err := Rollback(cfg.Dir, product); err != nil {
		t.Fatal(err)
	}
	unlock, err := lockFile(l.lockPath())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Unhold(cfg.Dir, product); !errors.Is(err, ErrBusy) {
		t.Errorf("unhold while locked: %v, want ErrBusy", err)
	}
	if _, err := Rollback(cfg.Dir, product); !errors.Is(err, ErrBusy) {
		t.Errorf("rollback while locked: %v, want ErrBusy", err)
	}
	unlock()
	if h, _ := Held(cfg.Dir, product); h == nil {
		t.Error("not held any more")
	}
}

// TestUpdate_CrashBeforeSwitch stops a run at each step between a complete
// stage and the switch of current, as a crash would (no cleanup), and
// checks that current is the old version, whole, and that the next run
// converges without downloading again.
func TestUpdate_CrashBeforeSwitch(t *testing.T) {
	t.Parallel()
	for _, step := range []string{"staged", "versioned", "previous"} {
		t.Run(step, func(t *testing.T) {
			t.Parallel()
			r := newRepo(t)
			r.publish(t, "1.0", 0, v1Files)
			src := counting(source.NewFile(r.dir))
			cfg := testConfig(t, r.trust, src)
			mustUpdate(t, cfg)
			v2 := map[string]string{"db/a.bin": "two", "db/b.bin": v1Files["db/b.bin"], "db/n.bin": "new"}
			r.publish(t, "2.0", 0, v2)

			crashing := cfg
			crashing.hooks = &hooks{stage: func(s string) error {
				if s == step {
					return errCrash
				}
				return nil
			}}
			if _, err := Update(testCtx(t), crashing); !errors.Is(err, errCrash) {
				t.Fatalf("err = %v, want the simulated crash", err)
			}
			assertTree(t, current(t, cfg), v1Files)
			if m, err := Installed(cfg.Dir, product); err != nil || m.Version != "1.0" {
				t.Fatalf("Installed after crash: %v %v", m, err)
			}

			res := mustUpdate(t, cfg)
			if res.Status != StatusUpdated || res.Version != "2.0" || res.BytesDownloaded != 0 {
				t.Errorf("rerun = %+v, want updated to 2.0 with nothing downloaded", *res)
			}
			assertTree(t, current(t, cfg), v2)
			assertTree(t, readTree(t, filepath.Join(cfg.Dir, product, previousName)+"/"), v1Files)
			state := filepath.Join(cfg.Dir, product, stateDirName)
			for _, d := range []string{stagingDirName, blobsDirName} {
				if ents, _ := os.ReadDir(filepath.Join(state, d)); len(ents) != 0 {
					t.Errorf("%s not empty: %v", d, ents)
				}
			}
			if ents, _ := os.ReadDir(filepath.Join(state, versionsDirName)); len(ents) != 2 {
				t.Errorf("versions on disk: %v, want 2", ents)
			}
		})
	}
}

// TestUpdate_CrashLeftovers plants what a crash mid-switch can leave (a
// temporary link, a half-built stage) and checks the next run cleans it.
func TestUpdate_CrashLeftovers(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	r.publish(t, "1.0", 0, v1Files)
	cfg := testConfig(t, r.trust, source.NewFile(r.dir))
	mustUpdate(t, cfg)
	root := filepath.Join(cfg.Dir, product)
	os.Symlink("nowhere", filepath.Join(root, ".current.tmp"))
	os.MkdirAll(filepath.Join(root, stateDirName, stagingDirName, "9.9", filesDirName, "x"), 0o755)
	os.WriteFile(filepath.Join(root, stateDirName, blobsDirName, sha("nothing")+partSuffix), []byte("noth"), 0o644)

	if res := mustUpdate(t, cfg); res.Status != StatusUpToDate {
		t.Errorf("status %s", res.Status)
	}
	for _, p := range []string{".current.tmp", stateDirName + "/" + stagingDirName + "/9.9", stateDirName + "/" + blobsDirName + "/" + sha("nothing") + partSuffix} {
		if _, err := os.Lstat(filepath.Join(root, p)); !os.IsNotExist(err) {
			t.Errorf("%s left behind: %v", p, err)
		}
	}
}

// enospcWriter fails with ENOSPC once limit bytes are written.
type enospcWriter struct {
	writeSyncer
	left *atomic.Int64
}

func (w enospcWriter) Write(p []byte) (int, error) {
	left := w.left.Load()
	if int64(len(p)) <= left {
		w.left.Add(-int64(len(p)))
		return w.writeSyncer.Write(p)
	}
	n, _ := w.writeSyncer.Write(p[:left])
	w.left.Store(0)
	return n, &os.PathError{Op: "write", Path: "part", Err: syscall.ENOSPC}
}

func TestUpdate_DiskFullWriter(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	r.publish(t, "1.0", 0, v1Files)
	primary := counting(source.NewFile(r.dir))
	secondary := counting(source.NewFile(r.dir))
	cfg := testConfig(t, r.trust, primary, secondary)
	mustUpdate(t, cfg)
	big := pseudoRandom(1 << 20)
	r.publish(t, "2.0", 0, map[string]string{"db/big.bin": big})

	var left atomic.Int64
	left.Store(300 << 10)
	full := cfg
	full.hooks = &hooks{partWriter: func(w writeSyncer) writeSyncer { return enospcWriter{w, &left} }}
	_, err := Update(testCtx(t), full)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("err = %v, want ENOSPC", err)
	}
	if !strings.Contains(err.Error(), "db/big.bin") || !strings.Contains(err.Error(), "run again") {
		t.Errorf("error does not name the file or say what to do: %v", err)
	}
	if n := secondary.blobRequests(); n != 0 {
		t.Errorf("a full disk made the agent try the next source (%d requests)", n)
	}
	assertTree(t, current(t, cfg), v1Files)

	// Space is back: the next run resumes.
	res := mustUpdate(t, cfg)
	if res.BytesDownloaded != int64(len(big))-300<<10 {
		t.Errorf("resumed run downloaded %d bytes, want %d", res.BytesDownloaded, len(big)-300<<10)
	}
	assertTree(t, current(t, cfg), map[string]string{"db/big.bin": big})
}

// TestUpdate_DiskFullTmpfs fills a real 1 MiB tmpfs.
func TestUpdate_DiskFullTmpfs(t *testing.T) {
	t.Parallel()
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt).CombinedOutput(); err != nil {
		testenv.SkipMissing(t, "permission to mount a tmpfs", fmt.Sprintf("run the tests as root (%v: %s)", err, strings.TrimSpace(string(out))))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount: %v: %s", err, out)
		}
	})
	r := newRepo(t)
	r.publish(t, "1.0", 0, v1Files)
	cfg := testConfig(t, r.trust, source.NewFile(r.dir))
	cfg.Dir = mnt
	mustUpdate(t, cfg)
	r.publish(t, "2.0", 0, map[string]string{"db/big.bin": pseudoRandom(2 << 20)})

	_, err := Update(testCtx(t), cfg)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("err = %v, want ENOSPC", err)
	}
	t.Logf("error: %v", err)
	assertTree(t, current(t, cfg), v1Files)
	if m, err := Installed(cfg.Dir, product); err != nil || m.Version != "1.0" {
		t.Errorf("Installed = %v, %v", m, err)
	}
	// Still full, still clean: a rerun fails the same way, nothing breaks.
	if _, err := Update(testCtx(t), cfg); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("rerun: %v", err)
	}
	assertTree(t, current(t, cfg), v1Files)
}

func TestStage_Target(t *testing.T) {
	t.Parallel()
	l := newLayout(t.TempDir(), product)
	if err := l.init(); err != nil {
		t.Fatal(err)
	}
	st, err := newStage(l, "1.0")
	if err != nil {
		t.Fatal(err)
	}
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(st.files, "link")); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(st.files, "file"), nil, 0o644)
	tests := []struct {
		path string
		ok   bool
	}{
		{"a/b/c", true},
		{"top", true},
		{"../x", false},
		{"/etc/x", false},
		{"a/../../x", false},
		{"", false},
		{".", false},
		{"link/x", false},   // through a planted symlink
		{"link", false},     // onto it
		{"file/x", false},   // below a file
		{"file", false},     // already there
		{"a//b", false},     // not clean
		{"a\\..\\x", false}, // backslash
	}
	for _, tt := range tests {
		got, err := st.target(tt.path)
		if (err == nil) != tt.ok {
			t.Errorf("target(%q) = %q, %v; want ok=%v", tt.path, got, err, tt.ok)
			continue
		}
		if err != nil && !errors.Is(err, ErrUnsafePath) {
			t.Errorf("target(%q): %v does not wrap ErrUnsafePath", tt.path, err)
		}
		if err == nil && !strings.HasPrefix(got, st.files+string(filepath.Separator)) {
			t.Errorf("target(%q) = %q, outside %s", tt.path, got, st.files)
		}
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Errorf("something was created through the symlink: %v", ents)
	}
}

func TestGroupBlobs_SizeConflict(t *testing.T) {
	t.Parallel()
	d := sha("x")
	_, err := groupBlobs([]manifest.File{{Path: "a", Size: 1, SHA256: d}, {Path: "b", Size: 2, SHA256: d}})
	if !errors.Is(err, manifest.ErrInvalid) {
		t.Errorf("err = %v", err)
	}
}

func TestReadLink_Broken(t *testing.T) {
	t.Parallel()
	for name, target := range map[string]string{
		"absolute":  "/etc",
		"escape":    "../../x",
		"not ours":  ".dpcache/versions/1.0",
		"bad name":  ".dpcache/versions/a~b/files",
		"dangling?": ".dpcache/versions/9/files",
	} {
		l := newLayout(t.TempDir(), product)
		l.init()
		os.Symlink(target, l.linkPath(currentName))
		_, err := Installed(filepath.Dir(l.root), product)
		if !errors.Is(err, ErrBrokenInstall) {
			t.Errorf("%s: Installed = %v, want ErrBrokenInstall", name, err)
		}
	}
}

// TestUpdate_InterruptedDownloadResumes cancels a run mid-download (as
// Ctrl-C or a shutdown would) and checks the next run continues where it
// stopped.
func TestUpdate_InterruptedDownloadResumes(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	big := pseudoRandom(2 << 20)
	r.publish(t, "1.0", 0, map[string]string{"db/big.bin": big})
	src := counting(source.NewFile(r.dir))
	cfg := testConfig(t, r.trust, src)
	ctx, cancel := context.WithCancel(testCtx(t))
	interrupted := cfg
	interrupted.Progress = func(done, total int64) {
		if done >= 512<<10 {
			cancel()
		}
	}
	_, err := Update(ctx, interrupted)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	got := src.bytes.Load()
	if _, err := Installed(cfg.Dir, product); !errors.Is(err, ErrNotInstalled) {
		t.Fatalf("Installed after an interrupted first run: %v", err)
	}
	// The second run's progress counts only what it transfers: the bytes
	// kept from the first run are neither done nor in the total (else a
	// progress bar shows them as arriving at once, at an impossible speed).
	resumed := cfg
	var calls [][2]int64
	resumed.Progress = func(done, total int64) { calls = append(calls, [2]int64{done, total}) }
	res := mustUpdate(t, resumed)
	if res.BytesDownloaded != int64(len(big))-got {
		t.Errorf("second run downloaded %d bytes, want %d (first run got %d)", res.BytesDownloaded, int64(len(big))-got, got)
	}
	if len(calls) == 0 {
		t.Fatal("no progress on the second run")
	}
	if first, last := calls[0], calls[len(calls)-1]; first[0] > 256<<10 || last[0] != last[1] || last[1] != int64(len(big))-got {
		t.Errorf("second run's progress went from %v to %v, want done from 0 to total = %d (the bytes left)", first, last, int64(len(big))-got)
	}
	if offs := src.offsetsOf(sha(big)); len(offs) != 2 || offs[1] != got {
		t.Errorf("blob requested at offsets %v, want [0 %d]", offs, got)
	}
	assertTree(t, current(t, cfg), map[string]string{"db/big.bin": big})
}

// A first run that fails before downloading anything (a mistyped product)
// leaves no empty DIR/<product>/.dpcache skeleton behind; a failure after
// bytes arrived keeps them for the next run (see
// TestUpdate_InterruptedDownloadResumes), and an existing DIR stays.
func TestUpdate_FailedFirstRunLeavesNoSkeleton(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	r.publish(t, "1.0", 0, v1Files)
	for _, name := range []string{"existing dir", "new dir"} {
		cfg := testConfig(t, r.trust, source.NewFile(r.dir))
		if name == "new dir" {
			cfg.Dir = filepath.Join(cfg.Dir, "endpoint")
		}
		cfg.Product = "nosuchproduct"
		if _, err := Update(testCtx(t), cfg); !errors.Is(err, source.ErrNotFound) {
			t.Fatalf("%s: err = %v, want not found", name, err)
		}
		entries, err := os.ReadDir(cfg.Dir)
		switch {
		case name == "existing dir" && (err != nil || len(entries) != 0):
			t.Errorf("%s: %s holds %v (%v) after a failed first run, want it empty", name, cfg.Dir, entries, err)
		case name == "new dir" && !errors.Is(err, fs.ErrNotExist):
			t.Errorf("%s: %s exists after a failed first run (%v), want it not created", name, cfg.Dir, entries)
		}
	}
}
