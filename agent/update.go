package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/source"
	"github.com/dpcache/dpcache/source/failover"
)

// Result statuses.
const (
	// StatusUpdated: a version was installed (a newer one, or the same
	// one again with other components or to repair damaged files).
	StatusUpdated = "updated"
	// StatusUpToDate: the installed version is the newest a source has
	// (also when its latest.json was re-signed under a higher serial:
	// nothing is installed).
	StatusUpToDate = "up-to-date"
	// StatusRolledBack: Rollback switched back to the previous version.
	StatusRolledBack = "rolled-back"
	// StatusHeld: the product is held on a version after a rollback;
	// nothing was installed (see Rollback, Unhold).
	StatusHeld = "held"
	// StatusFailed is only reported to a DP, for a run that failed.
	StatusFailed = "failed"
	// StatusStale: every source offered an expired latest.json. A version
	// newer than the installed one was still installed (an air-gapped
	// site updating from a mirror), but the sources look frozen.
	StatusStale = "stale"
)

// Result is what an update or rollback did. Its JSON form is what
// `dpcache update --json` prints.
type Result struct {
	Product string `json:"product"`
	Version string `json:"version"`
	// Serial is the serial of the latest.json the run acted on. It is
	// above the installed manifest's when the vendor re-signed the
	// installed version (`dpcache resign`).
	Serial uint64 `json:"serial"`
	// Status is StatusUpdated, StatusUpToDate, StatusHeld or StatusStale
	// (StatusRolledBack for Rollback).
	Status string `json:"status"`
	// Source is String() of the source that served the update: the one
	// that delivered the last file, or the one whose latest.json was
	// used when nothing was downloaded. Empty for a rollback and when
	// held.
	Source string `json:"source"`
	// BytesDownloaded counts the bytes received from sources in this run,
	// including any discarded as corrupt.
	BytesDownloaded int64 `json:"bytes_downloaded"`
	// FilesChanged counts the paths of `current` added, removed or whose
	// content changed.
	FilesChanged int `json:"files_changed"`
}

// Update brings cfg.Product in cfg.Dir to the newest version the sources
// offer, and reports the run to a source that accepts reports. When the
// product is held after a Rollback, it asks no source, installs nothing,
// and returns StatusHeld with the version held (reported as such).
//
// It reads latest.json from the first source that serves a valid one
// (signed by a key of cfg.Trust, for cfg.Product, with a serial not lower
// than the installed one: ErrLowerSerial otherwise), then the manifest it
// names. If that version is installed whole with the same components, the
// result is StatusUpToDate; a latest.json that pins the installed manifest
// by its digest names the installed version, whatever its serial (the
// vendor re-signed it with a new expiry: `dpcache resign`), so nothing is
// fetched or installed. Otherwise it assembles the new version in a
// staging directory: files already on disk (current, previous, earlier
// downloads) are reused by hard link after their SHA-256 is checked, the
// rest are downloaded, checked for size and SHA-256 while written, and
// synced. Then `current` is switched atomically to the new version and
// `previous` keeps the old one for Rollback; older versions are removed.
//
// A run that fails, or a crash at any moment, leaves `current` on the old
// version, whole; partial downloads are kept and the next run resumes
// them. An error names the source, the file and what went wrong; when
// every source failed it is a *failover.Error listing each.
//
// Update holds a lock on the product's directory for the whole run
// (ErrBusy if another run holds it). It does not close cfg.Sources.
func Update(ctx context.Context, cfg Config) (*Result, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	u := &updater{cfg: cfg, log: cfg.logger(), l: newLayout(cfg.Dir, cfg.Product), components: cfg.components(),
		health: failover.NewHealth(failover.Backoff{})}
	if cfg.hooks != nil && cfg.hooks.switcher != nil {
		u.l.sw = cfg.hooks.switcher
	}
	res, err := u.run(ctx)
	if err != nil {
		err = fmt.Errorf("update %s%s: %w%s", cfg.Product, where(" in ", cfg.Dir, err), err, localAdvice(err))
		u.log.Debug("update failed", "err", err)
	} else {
		u.log.Info("update done", "status", res.Status, "version", res.Version, "serial", res.Serial,
			"source", res.Source, "bytes", res.BytesDownloaded, "files_changed", res.FilesChanged)
	}
	if ctx.Err() == nil { // an interrupted run is not a result worth reporting
		if rerr := Report(ctx, cfg, res, err); rerr != nil {
			u.log.Warn("status report not sent", "err", rerr)
		}
	}
	if err != nil {
		return nil, err
	}
	return res, nil
}

// updater is one Update run.
type updater struct {
	cfg        Config
	log        *slog.Logger
	l          layout
	components []string
	health     *failover.Health // the run's memory of failed sources
}

// decision is what the sources offer: a verified latest.json and manifest.
type decision struct {
	src      string // the source that served latest.json
	latest   *manifest.Latest
	latestS  source.Signed
	man      *manifest.Manifest
	manS     source.Signed
	upToDate bool
	stale    bool // every source offered an expired latest.json
}

func (u *updater) run(ctx context.Context) (res *Result, err error) {
	created := u.l.missing()
	if err := u.l.init(); err != nil {
		u.l.removeEmpty(created)
		return nil, err
	}
	unlock, err := u.l.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	// A first run that fails before downloading anything leaves no empty
	// skeleton behind (a mistyped --product would leave one per typo).
	defer func() {
		if err != nil {
			u.l.removeEmpty(created)
		}
	}()
	if err := u.l.cleanTemps(); err != nil {
		return nil, err
	}
	if res, err := u.held(); res != nil || err != nil {
		return res, err
	}

	// What is installed. A `current` that is not our symlink or pointer
	// is left for the admin; a dangling one is repaired by installing
	// afresh.
	inst, err := u.l.linked(currentName)
	switch {
	case err == nil:
	case errors.Is(err, ErrNotInstalled):
		inst = nil
	case errors.Is(err, ErrBrokenInstall) && !u.l.isLink(currentName):
		return nil, err
	default:
		u.log.Warn("installed version unreadable; installing afresh", "err", err)
		inst = nil
	}

	d, err := u.resolve(ctx, inst)
	if err != nil {
		return nil, err
	}
	if d.upToDate {
		if err := u.l.gc(nil); err != nil {
			u.log.Warn("cleanup failed", "err", err)
		}
		res := &Result{
			Product: u.cfg.Product, Version: inst.man.Version, Serial: d.latest.Serial,
			Status: StatusUpToDate, Source: d.src,
		}
		if d.stale {
			res.Status = StatusStale
		}
		return res, nil
	}
	res, err = u.install(ctx, d, inst)
	if err == nil && d.stale {
		res.Status = StatusStale
	}
	return res, err
}

// held returns a StatusHeld result when the product is held after a
// rollback (nil otherwise), finishing first a rollback that a crash
// interrupted. No source is asked. Call with the lock held.
func (u *updater) held() (*Result, error) {
	if err := u.l.cleanHoldTemps(); err != nil {
		return nil, err
	}
	h, err := u.l.readHold()
	if err != nil || h == nil {
		return nil, err
	}
	if changed, err := u.l.settleHold(h); err != nil {
		return nil, err
	} else if changed {
		u.log.Warn("finished a rollback that was interrupted", "version", h.Version, "serial", h.Serial)
	}
	u.log.Info("held after a rollback; nothing installed until `dpcache unhold`", "version", h.Version, "serial", h.Serial)
	return &Result{Product: u.cfg.Product, Version: h.Version, Serial: h.Serial, Status: StatusHeld}, nil
}

// resolve asks the sources, through the failover engine, for the newest
// version: the first latest.json that verifies, has not expired and is not
// below the installed serial, then, unless the installed version is
// current, its manifest. When no source offers a current latest.json but
// some offered an expired one, the newest of those is used and the run is
// stale.
func (u *updater) resolve(ctx context.Context, inst *version) (*decision, error) {
	product := u.cfg.Product
	d := &decision{}
	chain := newChain(u.cfg.Sources, u.health, u.cfg.StallTimeout, u.log, func(kind string, s source.Signed) (err error) {
		if kind == failover.KindLatest {
			if d.latest, err = u.checkLatest(s, inst); err == nil {
				if stale := d.latest.Fresh(time.Now()); stale != nil {
					return failover.Stale(stale, d.latest.Serial)
				}
			}
			return err
		}
		d.man, err = verifyManifest(u.cfg.Trust, product, d.latest.Version, d.latest, s)
		return err
	})
	var err error
	if d.latestS, err = chain.Latest(ctx, product); err != nil {
		return nil, productNotFound(err)
	}
	if d.latestS.Stale {
		// No source is current: the newest expired version, which the
		// hook saw verify (d.latest holds the last one it saw).
		if d.latest, err = u.checkLatest(d.latestS, inst); err != nil {
			return nil, err
		}
		d.stale = true
	}
	d.src = d.latestS.Source
	if l := d.latest; inst != nil && installedVersion(l, inst) {
		switch broken := u.damaged(inst); {
		case !slices.Equal(inst.info.Components, u.components):
			u.log.Info("reinstalling the same version with other components", "version", l.Version,
				"installed", inst.info.Components, "wanted", u.components)
		case broken != "":
			u.log.Warn("installed files damaged; repairing", "version", l.Version, "file", broken)
		default:
			d.upToDate = true
			return d, nil
		}
	}
	if d.manS, err = chain.Manifest(ctx, product, d.latest.Version); err != nil {
		return nil, named(err, fmt.Sprintf("the manifest of %s %s", product, d.latest.Version))
	}
	return d, nil
}

// installedVersion reports whether l names the installed version: it pins
// the installed manifest by its SHA-256. Its serial may be above the
// manifest's: `dpcache resign` publishes a version again under the next
// serial with a new expiry and the same manifest (a published manifest
// never changes), and that is no reason to install anything.
func installedVersion(l *manifest.Latest, inst *version) bool {
	return l.Version == inst.man.Version && l.ManifestSHA256 == sha256Hex(inst.raw)
}

// checkLatest verifies a latest.json and refuses a version below the
// installed one (a rollback attack or a stale source) or one that claims
// the installed serial with other content.
//
// The floor is the installed manifest's serial, not the highest
// latest.json serial seen: after a resign, the latest.json that preceded
// it (same manifest, earlier expiry) is still accepted and means "up to
// date". Remembering the highest serial would refuse it, but gains nothing
// against a replay: it names the installed version, so it cannot make the
// agent install anything, and once it expires the source offering it is
// stale like any frozen source (ErrExpired); while it has not expired it
// was a valid statement of the vendor's. Refusing it would instead fail
// updates from a legitimate mirror or DP that has not caught up with the
// resign yet, and would need state kept beside the install, crash-safe.
func (u *updater) checkLatest(s source.Signed, inst *version) (*manifest.Latest, error) {
	l, err := verifyLatest(u.cfg.Trust, u.cfg.Product, s)
	if err != nil || inst == nil {
		return l, err
	}
	im := inst.man
	switch {
	case l.Serial < im.Serial:
		return nil, fmt.Errorf("offers %s serial %d, installed is %s serial %d; refusing to downgrade: %w",
			l.Version, l.Serial, im.Version, im.Serial, ErrLowerSerial)
	case l.Serial == im.Serial && !installedVersion(l, inst):
		return nil, fmt.Errorf("offers %s serial %d (manifest sha256 %s), installed is %s serial %d (manifest sha256 %s): %w",
			l.Version, l.Serial, l.ManifestSHA256, im.Version, im.Serial, sha256Hex(inst.raw), ErrSerialConflict)
	}
	return l, nil
}

// damaged returns the first installed file of v that is missing or has
// the wrong size ("" if none): a cheap check, not a hash of every file.
func (u *updater) damaged(v *version) string {
	for _, f := range v.files {
		fi, err := os.Lstat(filepath.Join(v.filesDir(), filepath.FromSlash(f.Path)))
		if err != nil || !fi.Mode().IsRegular() || fi.Size() != f.Size {
			return f.Path
		}
	}
	return ""
}

// install assembles d's version in staging and switches current to it.
func (u *updater) install(ctx context.Context, d *decision, inst *version) (*Result, error) {
	files := selectFiles(d.man, u.components)
	jobs, err := groupBlobs(files)
	if err != nil {
		return nil, err
	}
	needed := make(map[string]bool, len(jobs))
	for _, j := range jobs {
		needed[j.digest] = true
		for _, c := range j.chunks {
			needed[c.SHA256] = true
		}
	}
	// Downloads of other versions are of no more use.
	if err := u.l.clear(u.l.blobs, func(name string) bool {
		return needed[strings.TrimSuffix(name, partSuffix)]
	}); err != nil {
		return nil, err
	}
	st, err := newStage(u.l, d.latest.Version)
	if err != nil {
		return nil, err
	}
	u.log.Info("installing", "version", d.latest.Version, "serial", d.latest.Serial, "source", d.src,
		"files", len(files), "blobs", len(jobs), "components", u.components)

	srcs := withVersionHint(u.cfg.Sources, u.cfg.Product, d.latest.Version)
	f := &fetcher{
		chain:    newChain(srcs, u.health, u.cfg.StallTimeout, u.log, nil),
		dir:      u.l.blobs,
		log:      u.log,
		progress: u.cfg.Progress,
	}
	f.batch = batchDPs(srcs)
	if u.cfg.hooks != nil {
		f.wrap = u.cfg.hooks.partWriter
		if u.cfg.hooks.noBatch {
			f.batch = nil
		}
	}

	missing, err := u.reuse(ctx, st, jobs, f, inst)
	if err != nil {
		return nil, err
	}
	// Chunked files missing whole are built from chunks: those found in
	// installed files, and those fetched along with the unchunked files.
	var whole, chunked []*blobJob
	want, paths := map[string]bool{}, map[string]bool{}
	for _, j := range missing {
		if len(j.chunks) == 0 {
			whole = append(whole, j)
			continue
		}
		chunked = append(chunked, j)
		for _, p := range j.paths {
			paths[p] = true
		}
		for _, c := range j.chunks {
			want[c.SHA256] = true
		}
	}
	var asm *assembly
	var fetch []*blobJob
	if len(chunked) > 0 {
		if asm, err = openAssembly(chunked, f); err != nil {
			return nil, err
		}
		defer asm.close()
		if n := asm.resumedBytes(); n > 0 {
			u.log.Info("resuming chunked files", "bytes", n)
		}
		if fetch, err = asm.fill(indexChunks(u.installed(inst), want, paths)); err != nil {
			return nil, err
		}
	}
	if err := u.download(ctx, st, append(whole, fetch...), asm, f); err != nil {
		return nil, err
	}
	if asm != nil {
		if err := eachJob(ctx, chunked, u.cfg.Concurrency, func(ctx context.Context, j *blobJob) error {
			return asm.finish(st, j)
		}); err != nil {
			return nil, err
		}
	}

	// Metadata beside the files, then make the whole stage durable.
	info, err := json.MarshalIndent(installInfo{Components: u.components, Source: d.src, Installed: time.Now().UTC()}, "", "  ")
	if err != nil {
		return nil, err
	}
	for name, data := range map[string][]byte{
		manifest.ManifestName: d.manS.Data, manifestSigName: d.manS.Signature,
		manifest.LatestName: d.latestS.Data, latestSigName: d.latestS.Signature,
		installFileName: append(info, '\n'),
	} {
		if err := writeFileSync(filepath.Join(st.dir, name), data); err != nil {
			return nil, err
		}
	}
	if err := st.sync(); err != nil {
		return nil, err
	}
	if err := u.hook("staged"); err != nil {
		return nil, err
	}

	// Switch: the stage becomes a version directory, previous keeps the
	// old version, then current moves, each step atomic and durable.
	var inUse []string
	if inst != nil {
		inUse = append(inUse, inst.name)
	}
	inUse = append(inUse, u.l.referenced()...)
	name, err := u.l.newVersionName(d.latest.Version, inUse...)
	if err != nil {
		return nil, err
	}
	if err := os.Rename(st.dir, u.l.versionDir(name)); err != nil {
		return nil, &localError{fmt.Errorf("move staged version into place: %w", err)}
	}
	for _, dir := range []string{u.l.versions, u.l.staging} {
		if err := manifest.SyncDir(dir); err != nil {
			return nil, &localError{err}
		}
	}
	if err := u.hook("versioned"); err != nil {
		return nil, err
	}
	if inst != nil {
		if err := u.l.setLink(previousName, inst.name); err != nil {
			return nil, err
		}
	}
	if err := u.hook("previous"); err != nil {
		return nil, err
	}
	if err := u.l.setLink(currentName, name); err != nil {
		return nil, err
	}
	if err := u.l.gc(nil); err != nil {
		u.log.Warn("cleanup of old versions failed; the next run retries", "err", err)
	}

	var old []manifest.File
	if inst != nil {
		old = inst.files
	}
	res := &Result{
		Product:         u.cfg.Product,
		Version:         d.latest.Version,
		Serial:          d.latest.Serial,
		Status:          StatusUpdated,
		Source:          d.src,
		BytesDownloaded: f.downloaded.Load(),
		FilesChanged:    countChanges(old, files),
	}
	if last := f.lastServed(); last != "" {
		res.Source = last
	}
	return res, nil
}

// reuse places every blob already on disk (an earlier download, or a file
// of an installed version whose SHA-256 still matches) and returns the
// jobs left to download.
func (u *updater) reuse(ctx context.Context, st *stage, jobs []*blobJob, f *fetcher, inst *version) ([]*blobJob, error) {
	cands := u.candidates(inst)
	var (
		mu      sync.Mutex
		missing []*blobJob
	)
	err := eachJob(ctx, jobs, u.cfg.Concurrency, func(_ context.Context, j *blobJob) error {
		if j.size == 0 && j.digest == emptySHA256 {
			return st.createEmpty(j.paths)
		}
		for _, c := range append([]string{f.blobPath(j.digest)}, cands[j.digest]...) {
			if verifyFile(c, j.digest, j.size) {
				return st.place(c, j.paths, j.digest, j.size)
			}
		}
		mu.Lock()
		missing = append(missing, j)
		mu.Unlock()
		return nil
	})
	if err != nil {
		return nil, err
	}
	// Download in manifest order.
	slices.SortFunc(missing, func(a, b *blobJob) int { return a.index - b.index })
	return missing, nil
}

// candidates maps each digest to the installed files holding it: the
// current version's first, then the others kept on disk.
func (u *updater) candidates(inst *version) map[string][]string {
	out := map[string][]string{}
	for _, v := range u.installed(inst) {
		for _, f := range v.files {
			out[f.SHA256] = append(out[f.SHA256], filepath.Join(v.filesDir(), filepath.FromSlash(f.Path)))
		}
	}
	return out
}

// installed returns the versions on disk: inst first, then the others.
func (u *updater) installed(inst *version) []*version {
	var out []*version
	if inst != nil {
		out = append(out, inst)
	}
	entries, _ := os.ReadDir(u.l.versions)
	for _, e := range entries {
		if !e.IsDir() || (inst != nil && e.Name() == inst.name) || !validVersionDir(e.Name()) {
			continue
		}
		if v, err := u.l.loadVersion(e.Name()); err == nil {
			out = append(out, v)
		}
	}
	return out
}

// download fetches the missing blobs and places them in the stage (a
// chunk is written into its files in a).
func (u *updater) download(ctx context.Context, st *stage, jobs []*blobJob, a *assembly, f *fetcher) error {
	if len(jobs) == 0 {
		return nil
	}
	var total int64
	for _, j := range jobs {
		total += j.size
	}
	f.total = total
	u.log.Info("downloading", "blobs", len(jobs), "bytes", total)
	one := func(ctx context.Context, j *blobJob) error {
		if err := f.fetch(ctx, j); err != nil {
			return err
		}
		if j.chunkOf > 0 {
			return a.putFile(j.digest, f.blobPath(j.digest), j.size)
		}
		return st.place(f.blobPath(j.digest), j.paths, j.digest, j.size)
	}
	jobs, err := f.fetchBatches(ctx, jobs, a, u.cfg.Concurrency, one)
	if err != nil {
		return err
	}
	return eachJob(ctx, jobs, u.cfg.Concurrency, one)
}

// eachJob runs fn for each job, n at a time, until the first error or the
// end of ctx, whose cause it returns.
func eachJob(ctx context.Context, jobs []*blobJob, n int, fn func(context.Context, *blobJob) error) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(n)
	for _, j := range jobs {
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error {
			if gctx.Err() != nil {
				return context.Cause(gctx)
			}
			return fn(gctx, j)
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return context.Cause(ctx)
	}
	return nil
}

func (u *updater) hook(step string) error {
	if u.cfg.hooks == nil || u.cfg.hooks.stage == nil {
		return nil
	}
	return u.cfg.hooks.stage(step)
}

// groupBlobs groups files by digest, in manifest order. One digest listed
// with two sizes is refused: no content can match both. A digest listed
// chunked anywhere is built from the first chunk list given for it.
func groupBlobs(files []manifest.File) ([]*blobJob, error) {
	byDigest := map[string]*blobJob{}
	var jobs []*blobJob
	for _, f := range files {
		j, ok := byDigest[f.SHA256]
		if !ok {
			j = &blobJob{digest: f.SHA256, size: f.Size, index: len(jobs)}
			byDigest[f.SHA256] = j
			jobs = append(jobs, j)
		} else if j.size != f.Size {
			return nil, fmt.Errorf("manifest lists sha256 %s as %q (%d bytes) and %q (%d bytes): %w",
				f.SHA256, j.paths[0], j.size, f.Path, f.Size, manifest.ErrInvalid)
		}
		if len(j.chunks) == 0 {
			j.chunks = f.Chunks
		}
		j.paths = append(j.paths, f.Path)
	}
	return jobs, nil
}

var emptySHA256 = manifest.SHA256Hex(nil)

// sha256Hex is manifest.SHA256Hex, under the name resolveFrom uses.
var sha256Hex = manifest.SHA256Hex

func isSymlink(p string) bool {
	fi, err := os.Lstat(p)
	return err == nil && fi.Mode()&fs.ModeSymlink != 0
}

// where returns sep+dir for an error's context, or "" when err already
// names dir (a path under it): each place is said once.
func where(sep, dir string, err error) string {
	if dir != "" && strings.Contains(err.Error(), filepath.Clean(dir)) {
		return ""
	}
	return sep + dir
}

// localAdvice says what to do about a local disk failure ("" for other
// errors).
func localAdvice(err error) string {
	var le *localError
	switch {
	case !errors.As(err, &le):
		return ""
	case diskFull(err):
		return "; free disk space and run again (downloads resume)"
	default:
		return "; fix it and run again (downloads resume)"
	}
}

// withVersionHint tells DP sources which version the blobs belong to, so
// that a DP that has not seen that manifest yet (another DP of the site
// served it) fetches it rather than answer NotFound: an agent resuming on
// another DP then finishes there.
func withVersionHint(srcs []source.Source, product, version string) []source.Source {
	out := make([]source.Source, len(srcs))
	for i, s := range srcs {
		if g, ok := s.(*source.GRPC); ok {
			s = g.ForVersion(product, version)
		}
		out[i] = s
	}
	return out
}
