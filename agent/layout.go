package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dpcache/dpcache/manifest"
)

// The install directory of one product:
//
//	Dir/<product>/current  -> .dpcache/versions/<name>/files
//	Dir/<product>/previous -> .dpcache/versions/<name>/files
//	                          (symlinks on Unix, pointer files on Windows: switch.go)
//	Dir/.dpcache-id                             the installation's endpoint id (EndpointID)
//	Dir/<product>/.dpcache/lock                 held by a running update, rollback or unhold
//	Dir/<product>/.dpcache/hold.json            the product is held after a rollback (hold.go)
//	Dir/<product>/.dpcache/versions/<name>/     an installed version:
//	    files/                                  the product's files
//	    manifest.json, manifest.json.minisig    as the source served them
//	    latest.json, latest.json.minisig
//	    install.json                            components, source, time
//	Dir/<product>/.dpcache/staging/<version>/   a version being assembled (same shape)
//	Dir/<product>/.dpcache/blobs/<sha256>[.part] downloads, complete or in progress
//	Dir/<product>/.dpcache/trash/               on Windows, what was in use when removed
//
// <name> is the version name, or "<version>~<n>" when a version is
// reinstalled while its earlier copy is still current or previous ("~" is
// not allowed in version names, so the two never collide).
const (
	stateDirName    = ".dpcache"
	versionsDirName = "versions"
	stagingDirName  = "staging"
	blobsDirName    = "blobs"
	trashDirName    = "trash"
	filesDirName    = "files"
	lockFileName    = "lock"
	currentName     = "current"
	previousName    = "previous"
	partSuffix      = ".part"
	installFileName = "install.json"
	latestSigName   = manifest.LatestName + manifest.SigSuffix
	manifestSigName = manifest.ManifestName + manifest.SigSuffix
)

// layout names the paths of one product's install directory.
type layout struct {
	root     string // Dir/<product>
	state    string // root/.dpcache
	versions string
	staging  string
	blobs    string
	trash    string // root/.dpcache/trash: what could not be removed yet (pointerSwitch)
	sw       switcher
}

func newLayout(dir, product string) layout {
	root := filepath.Join(dir, product)
	state := filepath.Join(root, stateDirName)
	return layout{
		root:     root,
		state:    state,
		versions: filepath.Join(state, versionsDirName),
		staging:  filepath.Join(state, stagingDirName),
		blobs:    filepath.Join(state, blobsDirName),
		trash:    filepath.Join(state, trashDirName),
		sw:       defaultSwitcher,
	}
}

// init creates the state directories.
func (l layout) init() error {
	for _, d := range []string{l.versions, l.staging, l.blobs} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			// MkdirAll's error names the path that failed ("mkdir
			// DIR: not a directory"): say it once.
			var pe *fs.PathError
			if errors.As(err, &pe) {
				return &localError{err}
			}
			return &localError{fmt.Errorf("create %s: %w", d, err)}
		}
	}
	return nil
}

// missing returns the topmost of Dir and Dir/<product> that does not
// exist yet, or "" when both do: what a run creates, for removeEmpty.
func (l layout) missing() string {
	for _, d := range []string{filepath.Dir(l.root), l.root} {
		if _, err := os.Lstat(d); errors.Is(err, fs.ErrNotExist) {
			return d
		}
	}
	return ""
}

// removeEmpty removes what init created under top (from missing) when a
// run left nothing in it: no download to resume, no version. A directory
// that holds anything stays, with everything above it; it is best effort.
func (l layout) removeEmpty(top string) {
	if top == "" {
		return
	}
	for _, d := range []string{l.versions, l.staging, l.blobs, l.trash} {
		if err := os.Remove(d); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return
		}
	}
	_ = os.Remove(l.lockPath())
	for d := l.state; ; d = filepath.Dir(d) {
		if err := os.Remove(d); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return
		}
		if d == top || d == filepath.Dir(d) {
			return
		}
	}
}

func (l layout) lockPath() string            { return filepath.Join(l.state, lockFileName) }
func (l layout) linkPath(name string) string { return filepath.Join(l.root, name) }
func (l layout) tempLinkPath(name string) string {
	return filepath.Join(l.root, "."+name+".tmp")
}
func (l layout) versionDir(name string) string { return filepath.Join(l.versions, name) }

// linkTarget is the relative symlink target for version directory name, so
// the install directory can be moved as a whole.
func linkTarget(name string) string {
	return filepath.Join(stateDirName, versionsDirName, name, filesDirName)
}

// validVersionDir reports whether name is a version directory name the
// agent makes: a valid version name, optionally followed by "~<n>".
func validVersionDir(name string) bool {
	base, n, suffixed := strings.Cut(name, "~")
	if manifest.ValidName(base) != nil {
		return false
	}
	if !suffixed {
		return true
	}
	_, err := strconv.ParseUint(n, 10, 32)
	return err == nil
}

// setLink points link (current or previous) at version directory name,
// atomically and durably, the way this system's switcher does.
func (l layout) setLink(link, name string) error { return l.sw.setLink(l, link, name) }

// lock takes the product's lock (ErrBusy when another run holds it).
func (l layout) lock() (unlock func(), err error) { return l.sw.lock(l.lockPath()) }

// installInfo is install.json: what a version directory holds besides
// the signed documents.
type installInfo struct {
	Components []string  `json:"components"`
	Source     string    `json:"source"`
	Installed  time.Time `json:"installed"`
}

// version is a version directory on disk.
type version struct {
	name  string
	dir   string
	raw   []byte // manifest.json, verbatim
	man   *manifest.Manifest
	info  installInfo
	files []manifest.File // the installed files: the manifest's files of info.Components
}

func (v *version) filesDir() string { return filepath.Join(v.dir, filesDirName) }

// loadVersion reads version directory name. The documents are parsed, not
// verified: they were verified when installed, and whoever can write
// .dpcache can write the files too.
func (l layout) loadVersion(name string) (*version, error) {
	dir := l.versionDir(name)
	raw, err := os.ReadFile(filepath.Join(dir, manifest.ManifestName))
	if err != nil {
		return nil, fmt.Errorf("version %s: %w (%v)", name, ErrBrokenInstall, err)
	}
	m, err := manifest.ParseManifest(raw)
	if err != nil {
		return nil, fmt.Errorf("version %s: %w (%v)", name, ErrBrokenInstall, err)
	}
	v := &version{name: name, dir: dir, raw: raw, man: m}
	if b, err := os.ReadFile(filepath.Join(dir, installFileName)); err == nil {
		_ = json.Unmarshal(b, &v.info) // best effort: a bad file means "unknown"
	}
	if len(v.info.Components) == 0 {
		v.info.Components = []string{manifest.ComponentDatabases, manifest.ComponentModules}
	}
	v.files = selectFiles(m, v.info.Components)
	return v, nil
}

// linked returns the version that link points to. A missing link wraps
// ErrNotInstalled (for current) or ErrNoPrevious (for previous).
func (l layout) linked(link string) (*version, error) {
	name, err := l.readLink(link)
	if errors.Is(err, fs.ErrNotExist) {
		if link == previousName {
			return nil, fmt.Errorf("%s: %w", l.root, ErrNoPrevious)
		}
		return nil, fmt.Errorf("%s: %w", l.root, ErrNotInstalled)
	}
	if err != nil {
		return nil, err
	}
	v, err := l.loadVersion(name)
	if err != nil {
		return nil, fmt.Errorf("%s points to a damaged version: %w", l.linkPath(link), err)
	}
	return v, nil
}

// newVersionName returns a directory name for version that no link uses.
// An unreferenced directory of that name (left by a crash) is removed; if
// it cannot be yet (a file in it is open, on Windows), the next name is
// taken.
func (l layout) newVersionName(version string, inUse ...string) (string, error) {
	name := version
	for n := 1; ; n++ {
		if !slices.Contains(inUse, name) {
			if err := l.sw.discard(l, l.versionDir(name)); err != nil {
				return "", err
			}
			if _, err := os.Lstat(l.versionDir(name)); errors.Is(err, fs.ErrNotExist) {
				return name, nil
			}
		}
		name = version + "~" + strconv.Itoa(n)
	}
}

// referenced returns the version directory names current and previous
// point to (when they are valid links).
func (l layout) referenced() []string {
	var names []string
	for _, link := range []string{currentName, previousName} {
		if name, err := l.readLink(link); err == nil {
			names = append(names, name)
		}
	}
	return names
}

// cleanTemps removes what a crashed run can leave behind besides
// downloads: temporary links and staging directories, and finishes the
// removals earlier runs left. Staging holds only links to blobs and
// installed files, so nothing downloaded is lost.
func (l layout) cleanTemps() error {
	for _, link := range []string{currentName, previousName} {
		if err := os.Remove(l.tempLinkPath(link)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return &localError{fmt.Errorf("remove %s: %w", l.tempLinkPath(link), err)}
		}
	}
	if err := l.sw.cleanup(l); err != nil {
		return err
	}
	return l.clear(l.staging, nil)
}

// gc removes version directories that neither current nor previous
// points to, and the downloads not in keepBlobs.
func (l layout) gc(keepBlobs map[string]bool) error {
	refs := l.referenced()
	if err := l.clear(l.versions, func(name string) bool { return slices.Contains(refs, name) }); err != nil {
		return err
	}
	return l.clear(l.blobs, func(name string) bool {
		return keepBlobs[strings.TrimSuffix(name, partSuffix)]
	})
}

// clear is removeChildren through the switcher: on Windows an entry in
// use (a download hard-linked to an installed file an application holds
// open) is left for a later run instead of failing this one.
func (l layout) clear(dir string, keep func(name string) bool) error {
	return removeChildrenWith(dir, keep, func(path string) error { return l.sw.discard(l, path) })
}

// removeChildren removes every entry of dir for which keep is nil or
// false.
func removeChildren(dir string, keep func(name string) bool) error {
	return removeChildrenWith(dir, keep, func(path string) error {
		if err := os.RemoveAll(path); err != nil {
			return &localError{fmt.Errorf("remove %s: %w", path, err)}
		}
		return nil
	})
}

// removeChildrenWith calls remove on every entry of dir for which keep is
// nil or false; a missing dir has no entries.
func removeChildrenWith(dir string, keep func(name string) bool, remove func(path string) error) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return &localError{fmt.Errorf("list %s: %w", dir, err)}
	}
	for _, e := range entries {
		if keep != nil && keep(e.Name()) {
			continue
		}
		if err := remove(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// selectFiles returns m's files of the given components, in manifest
// order.
func selectFiles(m *manifest.Manifest, components []string) []manifest.File {
	out := make([]manifest.File, 0, len(m.Files))
	for _, f := range m.Files {
		if slices.Contains(components, f.Component) {
			out = append(out, f)
		}
	}
	return out
}

// countChanges counts the paths added, removed or changed between two
// file sets.
func countChanges(old, new []manifest.File) int {
	before := make(map[string]string, len(old))
	for _, f := range old {
		before[f.Path] = f.SHA256
	}
	n := 0
	for _, f := range new {
		if d, ok := before[f.Path]; !ok || d != f.SHA256 {
			n++
		}
		delete(before, f.Path)
	}
	return n + len(before)
}

func fileKind(fi fs.FileInfo) string {
	switch {
	case fi.IsDir():
		return "directory"
	case fi.Mode().IsRegular():
		return "regular file"
	case fi.Mode()&fs.ModeSymlink != 0:
		return "symlink"
	default:
		return "special file"
	}
}

// writeFileSync writes data to a new file and syncs it.
func writeFileSync(path string, data []byte) error {
	if err := manifest.WriteNewFile(path, data, 0o644); err != nil {
		return &localError{err}
	}
	return nil
}
