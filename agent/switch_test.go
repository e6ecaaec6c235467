package agent

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dpcache/dpcache/source"
)

// A switchCase is one switcher the conformance tests run: the system's own
// (switchcases_*_test.go) and the Windows logic over fakeWinFS.
type switchCase struct {
	name string
	// windows: an open file cannot be removed or renamed.
	windows bool
	new     func(t *testing.T) (switcher, opener)
}

// An opener holds a file open as another program would, until the
// returned func is called.
type opener func(path string) (close func())

func fakeWindowsCase() switchCase {
	return switchCase{name: "pointer over fake Windows", windows: true, new: func(*testing.T) (switcher, opener) {
		fake := newFakeWinFS()
		return &pointerSwitch{fs: fake, retries: 20, pause: time.Millisecond}, fake.open
	}}
}

var v3Files = map[string]string{"db/a.bin": "three", "db/b.bin": v1Files["db/b.bin"]}

// switchEnv is a product installed with one switcher.
type switchEnv struct {
	t    *testing.T
	c    switchCase
	r    *repo
	cfg  Config
	l    layout
	open opener
	fake *fakeWinFS // when the case runs over the fake
}

func newSwitchEnv(t *testing.T, c switchCase) *switchEnv {
	t.Helper()
	sw, open := c.new(t)
	r := newRepo(t)
	e := &switchEnv{t: t, c: c, r: r, cfg: testConfig(t, r.trust, source.NewFile(r.dir)), open: open}
	e.use(sw)
	if p, ok := sw.(*pointerSwitch); ok {
		e.fake, _ = p.fs.(*fakeWinFS)
	}
	return e
}

// use makes sw the switcher of every later run.
func (e *switchEnv) use(sw switcher) {
	e.cfg.hooks = &hooks{switcher: sw}
	e.l = newLayout(e.cfg.Dir, product)
	e.l.sw = sw
}

// installV1 publishes version 1.0 and installs it.
func (e *switchEnv) installV1() {
	e.t.Helper()
	e.r.publish(e.t, "1.0", 0, v1Files)
	e.update()
}

// publishV2 publishes version 2.0 (not installed).
func (e *switchEnv) publishV2() {
	e.t.Helper()
	e.r.publish(e.t, "2.0", 0, v2Files)
}

func (e *switchEnv) update() *Result {
	e.t.Helper()
	return mustUpdate(e.t, e.cfg)
}

// tree returns what link points to, read as an application would.
func (e *switchEnv) tree(link string) map[string]string {
	e.t.Helper()
	name, err := e.l.readLink(link)
	if err != nil {
		e.t.Fatalf("read %s: %v", link, err)
	}
	return readTree(e.t, filepath.Join(e.l.versionDir(name), filesDirName)+string(filepath.Separator))
}

// checkKind checks that current and previous are of the switcher's kind,
// and that a Windows switcher made no symlink anywhere.
func (e *switchEnv) checkKind() {
	e.t.Helper()
	for _, link := range []string{currentName, previousName} {
		fi, err := os.Lstat(e.l.linkPath(link))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			e.t.Fatal(err)
		}
		if sym := fi.Mode()&fs.ModeSymlink != 0; sym == e.c.windows {
			e.t.Errorf("%s is a %s", link, fileKind(fi))
		}
	}
	if !e.c.windows {
		return
	}
	_ = filepath.WalkDir(e.cfg.Dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type()&fs.ModeSymlink != 0 {
			e.t.Errorf("%s is a symlink", p)
		}
		return nil
	})
}

// checkClean checks that only current's and previous' versions are on
// disk, with no temporary link, stage, download or trash, and that no
// file outside them holds content of version 1's own.
func (e *switchEnv) checkClean() {
	e.t.Helper()
	var want []string
	for _, link := range []string{currentName, previousName} {
		if name, err := e.l.readLink(link); err == nil {
			want = append(want, name)
		}
	}
	var got []string
	ents, _ := os.ReadDir(e.l.versions)
	for _, d := range ents {
		got = append(got, d.Name())
	}
	slices.Sort(want)
	if !slices.Equal(got, slices.Compact(want)) {
		e.t.Errorf("versions on disk %v, want %v", got, want)
	}
	for _, dir := range []string{e.l.staging, e.l.blobs} {
		if ents, _ := os.ReadDir(dir); len(ents) > 0 {
			e.t.Errorf("%s holds %d entries, want none", dir, len(ents))
		}
	}
	if _, err := os.Lstat(e.l.trash); !errors.Is(err, fs.ErrNotExist) {
		e.t.Errorf("%s left behind (%v)", e.l.trash, err)
	}
	for _, link := range []string{currentName, previousName} {
		if _, err := os.Lstat(e.l.tempLinkPath(link)); !errors.Is(err, fs.ErrNotExist) {
			e.t.Errorf("%s left behind (%v)", e.l.tempLinkPath(link), err)
		}
	}
	_ = filepath.WalkDir(e.cfg.Dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() && filepath.Dir(p) == e.l.versions && slices.Contains(want, d.Name()) {
			return filepath.SkipDir
		}
		if err == nil && d.Type().IsRegular() {
			if b, _ := os.ReadFile(p); string(b) == v1Files["db/a.bin"] {
				e.t.Errorf("%s still holds version 1's db/a.bin", p)
			}
		}
		return nil
	})
}

// TestSwitch_Conformance runs the same steps on each switcher: the real
// one of this system and the Windows logic over a file system keeping
// Windows' rules. What differs between them (whether an open file stops
// its removal) is checked where the case says so.
func TestSwitch_Conformance(t *testing.T) {
	t.Parallel()
	for _, c := range switchCases() {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			t.Run("update, rollback, unhold", func(t *testing.T) {
				t.Parallel()
				e := newSwitchEnv(t, c)
				e.r.publish(t, "1.0", 0, v1Files)
				if res := e.update(); res.Status != StatusUpdated || res.Version != "1.0" {
					t.Fatalf("first update: %+v", res)
				}
				assertTree(t, e.tree(currentName), v1Files)
				e.publishV2()
				if res := e.update(); res.Status != StatusUpdated || res.Version != "2.0" {
					t.Fatalf("second update: %+v", res)
				}
				assertTree(t, e.tree(currentName), v2Files)
				assertTree(t, e.tree(previousName), v1Files)
				e.checkKind()
				// The public reader, whatever switcher wrote the links.
				if m, err := Installed(e.cfg.Dir, product); err != nil || m.Version != "2.0" {
					t.Fatalf("Installed = %v, %v", m, err)
				}

				res, err := rollback(e.l, product)
				if err != nil || res.Status != StatusRolledBack || res.Version != "1.0" {
					t.Fatalf("rollback = %+v, %v", res, err)
				}
				assertTree(t, e.tree(currentName), v1Files)
				assertTree(t, e.tree(previousName), v2Files)
				if res := e.update(); res.Status != StatusHeld || res.Version != "1.0" {
					t.Fatalf("update while held: %+v", res)
				}
				if _, err := rollback(e.l, product); !errors.Is(err, ErrHeld) {
					t.Fatalf("second rollback: %v, want ErrHeld", err)
				}
				if _, err := unhold(e.l); err != nil {
					t.Fatalf("unhold: %v", err)
				}
				if res := e.update(); res.Status != StatusUpdated || res.Version != "2.0" {
					t.Fatalf("update after unhold: %+v", res)
				}
				assertTree(t, e.tree(currentName), v2Files)
				e.checkKind()
				e.checkClean()
			})

			// The version rolled back from is removed by the update
			// after unhold, while a program still reads it.
			t.Run("rollback and unhold with a file in use", func(t *testing.T) {
				t.Parallel()
				e := newSwitchEnv(t, c)
				e.installV1()
				e.publishV2()
				e.update()
				name, _ := e.l.readLink(currentName)
				inUse := filepath.Join(e.l.versionDir(name), filesDirName, "db", "a.bin")
				closeFile := e.open(inUse)
				if _, err := rollback(e.l, product); err != nil {
					t.Fatal(err)
				}
				assertTree(t, e.tree(currentName), v1Files)
				if _, err := unhold(e.l); err != nil {
					t.Fatal(err)
				}
				if res := e.update(); res.Status != StatusUpdated || res.Version != "2.0" {
					t.Fatalf("update after unhold: %+v", res)
				}
				assertTree(t, e.tree(currentName), v2Files)
				assertTree(t, e.tree(previousName), v1Files)
				if cur, _ := e.l.readLink(currentName); cur == name {
					t.Errorf("2.0 reinstalled into %s, the directory rolled back from", cur)
				}
				if _, err := os.Stat(inUse); c.windows && err != nil {
					t.Errorf("the file in use is gone: %v", err)
				}
				closeFile()
				if res := e.update(); res.Status != StatusUpToDate {
					t.Fatalf("next run: %+v", res)
				}
				if isDir(e.l.versionDir(name)) {
					t.Errorf("%s is still on disk after the file was closed", e.l.versionDir(name))
				}
				e.checkClean()
			})

			t.Run("a second run is refused by the lock", func(t *testing.T) {
				t.Parallel()
				e := newSwitchEnv(t, c)
				e.installV1()
				e.publishV2()
				unlock, err := e.l.lock()
				if err != nil {
					t.Fatal(err)
				}
				if _, err := Update(testCtx(t), e.cfg); !errors.Is(err, ErrBusy) {
					t.Errorf("update while locked: %v, want ErrBusy", err)
				}
				if _, err := rollback(e.l, product); !errors.Is(err, ErrBusy) {
					t.Errorf("rollback while locked: %v, want ErrBusy", err)
				}
				if _, err := unhold(e.l); !errors.Is(err, ErrBusy) {
					t.Errorf("unhold while locked: %v, want ErrBusy", err)
				}
				assertTree(t, e.tree(currentName), v1Files)
				unlock()
				e.update()
				assertTree(t, e.tree(currentName), v2Files)
			})

			// An application holds a file of the version the update
			// removes (two updates old): through that version's own
			// path, or through current (a hard link of it, the same
			// file on disk).
			for _, through := range []string{"the old version", "current"} {
				t.Run("a file in use through "+through, func(t *testing.T) {
					t.Parallel()
					e := newSwitchEnv(t, c)
					e.installV1()
					e.publishV2()
					e.update()
					var path string
					if through == "current" {
						name, _ := e.l.readLink(currentName)
						path = filepath.Join(e.l.versionDir(name), filesDirName, "db", "b.bin")
					} else {
						name, _ := e.l.readLink(previousName)
						path = filepath.Join(e.l.versionDir(name), filesDirName, "db", "a.bin")
					}
					closeFile := e.open(path)
					e.r.publish(t, "3.0", 0, v3Files)
					if res := e.update(); res.Status != StatusUpdated || res.Version != "3.0" {
						t.Fatalf("update with a file in use: %+v", res)
					}
					assertTree(t, e.tree(currentName), v3Files)
					assertTree(t, e.tree(previousName), v2Files)
					if c.windows && through == "the old version" {
						// Neither removable nor movable: still in
						// versions/, for the next run.
						if _, err := os.Stat(path); err != nil {
							t.Errorf("the file in use is gone: %v", err)
						}
					}
					if c.windows && through == "current" {
						// Its directory moved to the trash; the link
						// to the file in use is left there.
						if ents, _ := os.ReadDir(e.l.trash); len(ents) != 1 {
							t.Errorf("trash holds %d entries, want 1", len(ents))
						}
						if e.fake != nil && !slices.ContainsFunc(e.fake.scheduled(), func(p string) bool {
							return strings.HasPrefix(p, e.l.trash) && filepath.Base(p) == "b.bin"
						}) {
							t.Errorf("the file left in the trash is not scheduled for removal at reboot: %v", e.fake.scheduled())
						}
					}
					closeFile()
					if res := e.update(); res.Status != StatusUpToDate {
						t.Fatalf("next run: %+v", res)
					}
					e.checkClean()
				})
			}

			for _, step := range []string{"staged", "versioned", "previous"} {
				t.Run("a crash after "+step+" and a temporary pointer", func(t *testing.T) {
					t.Parallel()
					e := newSwitchEnv(t, c)
					e.installV1()
					e.publishV2()
					crashing := e.cfg
					crashing.hooks = &hooks{switcher: e.l.sw, stage: func(s string) error {
						if s == step {
							return errCrash
						}
						return nil
					}}
					if _, err := Update(testCtx(t), crashing); !errors.Is(err, errCrash) {
						t.Fatalf("crashing update: %v", err)
					}
					// And a switch stopped between writing the
					// temporary pointer and renaming it.
					if err := os.WriteFile(e.l.tempLinkPath(currentName), []byte(".dpcache/vers"), 0o644); err != nil {
						t.Fatal(err)
					}
					assertTree(t, e.tree(currentName), v1Files)
					if res := e.update(); res.Status != StatusUpdated || res.Version != "2.0" {
						t.Fatalf("next run: %+v", res)
					}
					assertTree(t, e.tree(currentName), v2Files)
					assertTree(t, e.tree(previousName), v1Files)
					e.checkKind()
					e.checkClean()
				})
			}

			t.Run("a current not made by dpcache is left alone", func(t *testing.T) {
				t.Parallel()
				for _, kind := range []string{"file", "directory"} {
					e := newSwitchEnv(t, c)
					e.installV1()
					cur := e.l.linkPath(currentName)
					rm(t, cur)
					if kind == "file" {
						if err := os.WriteFile(cur, []byte("the admin's notes\n"), 0o644); err != nil {
							t.Fatal(err)
						}
					} else if err := os.Mkdir(cur, 0o755); err != nil {
						t.Fatal(err)
					}
					_, err := Update(testCtx(t), e.cfg)
					if !errors.Is(err, ErrBrokenInstall) || strings.Count(err.Error(), "\n") > 0 {
						t.Errorf("%s: update = %v, want one line wrapping ErrBrokenInstall", kind, err)
					}
					if b, _ := os.ReadFile(cur); kind == "file" && string(b) != "the admin's notes\n" {
						t.Errorf("%s: current changed to %q", kind, b)
					} else if kind == "directory" && !isDir(cur) {
						t.Errorf("%s: current is no longer a directory", kind)
					}
				}
			})

			t.Run("a dangling current is repaired", func(t *testing.T) {
				t.Parallel()
				e := newSwitchEnv(t, c)
				e.installV1()
				name, _ := e.l.readLink(currentName)
				rm(t, e.l.versionDir(name))
				if res := e.update(); res.Status != StatusUpdated {
					t.Fatalf("update: %+v", res)
				}
				assertTree(t, e.tree(currentName), v1Files)
				e.checkKind()
			})

			t.Run("a directory the other system made", func(t *testing.T) {
				t.Parallel()
				e := newSwitchEnv(t, c)
				mine := e.l.sw
				var other switcher = symlinkSwitch{}
				if !c.windows {
					other = newPointerSwitch(newFakeWinFS())
				} else if err := os.Symlink("x", filepath.Join(t.TempDir(), "probe")); err != nil {
					t.Skipf("no symlinks here: %v", err)
				}
				e.use(other)
				e.installV1()
				e.use(mine)
				if m, err := Installed(e.cfg.Dir, product); err != nil || m.Version != "1.0" {
					t.Fatalf("Installed = %v, %v", m, err)
				}
				e.publishV2()
				e.update()
				assertTree(t, e.tree(currentName), v2Files)
				assertTree(t, e.tree(previousName), v1Files)
				e.checkKind()
				if _, err := rollback(e.l, product); err != nil {
					t.Fatal(err)
				}
				assertTree(t, e.tree(currentName), v1Files)
			})
		})
	}
}

// A reader holding `current` open for a moment (an application reading
// the pointer) makes the rename over it fail: the switch retries; a
// reader that never lets go fails the update with current whole.
func TestPointerSwitch_ReaderHoldsCurrent(t *testing.T) {
	t.Parallel()
	fake := newFakeWinFS()
	sw := &pointerSwitch{fs: fake, retries: 3, pause: time.Millisecond}
	e := newSwitchEnv(t, switchCase{name: "fake", windows: true, new: func(*testing.T) (switcher, opener) {
		return sw, fake.open
	}})
	e.installV1()
	e.publishV2()
	fake.makeBusy(e.l.linkPath(currentName), 2)
	e.update()
	assertTree(t, e.tree(currentName), v2Files)

	e.r.publish(t, "3.0", 0, v3Files)
	fake.makeBusy(e.l.linkPath(currentName), 1000)
	_, err := Update(testCtx(t), e.cfg)
	if err == nil || !strings.Contains(err.Error(), "close the program reading it") || !errors.Is(err, errInUse) {
		t.Fatalf("update with current held: %v", err)
	}
	assertTree(t, e.tree(currentName), v2Files)
	fake.makeBusy(e.l.linkPath(currentName), 0)
	e.update()
	assertTree(t, e.tree(currentName), v3Files)
	e.checkClean()
}

// A version directory a crash left that cannot be removed (a file in it is
// open) does not block the install of that version: it goes under another
// name, and the next run removes the leftover.
func TestPointerSwitch_InUseNameNotReused(t *testing.T) {
	t.Parallel()
	e := newSwitchEnv(t, fakeWindowsCase())
	e.installV1()
	e.publishV2()
	crashing := e.cfg
	crashing.hooks = &hooks{switcher: e.l.sw, stage: func(s string) error {
		if s == "versioned" {
			return errCrash
		}
		return nil
	}}
	if _, err := Update(testCtx(t), crashing); !errors.Is(err, errCrash) {
		t.Fatalf("crashing update: %v", err)
	}
	closeFile := e.open(filepath.Join(e.l.versionDir("2.0"), filesDirName, "db", "a.bin"))
	e.update()
	if name, _ := e.l.readLink(currentName); name != "2.0~1" {
		t.Errorf("current is %q, want 2.0~1 (2.0 is held open)", name)
	}
	assertTree(t, e.tree(currentName), v2Files)
	closeFile()
	e.update()
	if isDir(e.l.versionDir("2.0")) {
		t.Error("the leftover 2.0 is still on disk after the file was closed")
	}
	e.checkClean()
}

// The pointer file is the relative path a symlink holds, one line, and a
// hand-written one with backslashes reads the same.
func TestPointerSwitch_Format(t *testing.T) {
	t.Parallel()
	l := newLayout(t.TempDir(), product)
	l.sw = newPointerSwitch(newFakeWinFS())
	if err := l.init(); err != nil {
		t.Fatal(err)
	}
	if err := l.setLink(currentName, "1.0~2"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(l.linkPath(currentName))
	if err != nil || string(b) != ".dpcache/versions/1.0~2/files\n" {
		t.Fatalf("pointer = %q, %v", b, err)
	}
	for content, want := range map[string]string{
		".dpcache\\versions\\1.0\\files\r\n":  "1.0",
		".dpcache/versions/1.0/files":         "1.0",
		"../../etc\n":                         "",
		".dpcache/versions/a~b/files\n":       "",
		strings.Repeat("x", maxPointerSize+1): "",
	} {
		if err := os.WriteFile(l.linkPath(currentName), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := l.readLink(currentName)
		if want == "" {
			if !errors.Is(err, ErrBrokenInstall) {
				t.Errorf("%.30q: %q, %v; want ErrBrokenInstall", content, got, err)
			}
		} else if got != want || err != nil {
			t.Errorf("%.30q: %q, %v; want %q", content, got, err, want)
		}
	}
}
