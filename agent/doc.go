// Package agent is the endpoint's update task: what `dpcache update` and
// `dpcache rollback` run. It asks ordered sources for a product's newest
// version, verifies the signed documents against trusted keys, downloads
// only the files that changed, checks every byte against the manifest, and
// switches the installed version atomically, keeping the previous one for
// rollback. After a run it reports the outcome to a distribution point.
//
// # Install directory
//
// Update installs into Dir/<product>/current, a symlink to a version
// directory under Dir/<product>/.dpcache/versions/; `previous` points to
// the version before. Applications read files through `current`:
//
//	Dir/<product>/current  -> .dpcache/versions/<version>/files
//	Dir/<product>/previous -> .dpcache/versions/<old version>/files
//	Dir/<product>/.dpcache/                       the agent's state
//
// A new version is assembled in .dpcache/staging/, synced, renamed into
// .dpcache/versions/, and then `previous` and `current` are each replaced
// by rename(2) of a new symlink, which is atomic: a reader, or a crash,
// sees the old version or the new one, never a mix. Files that did not
// change are hard links to the installed ones (a copy where links are not
// supported), so an update costs the disk space of what changed.
//
// # Windows
//
// Windows has no symlink an ordinary user may make, no rename over a
// directory link, and no flock; a file open in another program, through
// any of its hard links, can be neither deleted nor renamed. There
// `current` and `previous` are pointer files, one line each, the same
// relative path a symlink would hold:
//
//	Dir\<product>\current     .dpcache/versions/<version>/files
//
// An application reads the line and opens files under Dir\<product>\<line>.
// A switch writes .current.tmp, flushes it and renames it over `current`
// with MoveFileEx(MOVEFILE_REPLACE_EXISTING|MOVEFILE_WRITE_THROUGH),
// atomic on NTFS, retrying for about a second while a reader holds the
// pointer open. Removing an old version renames its directory into
// .dpcache/trash/ and deletes what is not in use; later runs delete the
// rest (and what is still in use is scheduled for deletion at reboot,
// which only an administrator may do). A version directory a crash left
// that cannot be removed is not reused: the new one takes the next name.
// Both kinds of link are read on both systems, so a directory made on one
// is updated, rolled back and read on the other; each system writes its
// own kind. The Windows logic is tested on Linux over a file system that
// keeps Windows' rules (fakewin_test.go), by the tests that run the real
// Unix switcher.
//
// # Rollback and hold
//
// Rollback switches `current` back to `previous` and holds the product
// there (Dir/<product>/.dpcache/hold.json): Update then asks no source,
// installs nothing and returns StatusHeld, until Unhold. A second Rollback
// while held fails with ErrHeld: nothing older is kept. The hold is
// written before the links move and is the journal of the switch, so a
// crash leaves the product on the newer version not held, or on the older
// one held; the next locked run finishes an interrupted switch.
//
// # Endpoint id
//
// A status report names the endpoint by an id generated once and kept in
// Dir/.dpcache-id (EndpointID), so two install roots on one host are two
// endpoints; the host name is reported beside it. Config.EndpointID
// overrides it.
//
// # Failover and resume
//
// Sources are tried in order. A source that is unreachable, lacks the
// product, serves a document with a bad or untrusted signature, offers a
// lower serial than the one installed, or serves corrupt bytes is passed
// over for the next. Downloads go to .dpcache/blobs/<sha256>.part and
// continue at their offset, from the same source when its stream broke,
// from the next one otherwise, or in the next run; content whose SHA-256
// does not match after a resume is discarded whole.
//
// The chunks of chunked files are read in batches (one ReadBlobs request
// for up to 1,024 chunks or 16 MiB) from the distribution points that head
// the sources, up to three at once, each taking the next batch it has not
// tried; a DP that fails, stalls or sends a chunk that does not match its
// digest is dropped for the run and its batch goes to the others. Each
// chunk is verified in memory and written at its offsets in the file being
// built, .dpcache/blobs/<sha256>.part, whose whole SHA-256 is computed as
// its chunks arrive. A chunk no DP delivered is fetched on its own as
// above; the next run keeps the chunks an interrupted run's .part holds
// intact and fetches the others.
//
// # Mirror
//
// Mirror is the update utility: it copies a version into a folder in
// repository layout, documents last and only when they changed, and then
// keeps MirrorConfig.KeepVersions versions, removing older version folders
// (manifest first) before the blobs no kept manifest of any product uses,
// so a server reading the folder meanwhile never sees a kept version
// lacking a blob. Partial downloads and the run's lock live in
// To/.dpcache-partial/ (0700), removed when no partial download is left.
//
// # Caveats
//
// Applications must open files through the `current` link (or re-resolve
// it; on Windows, re-read the pointer) to see a new version; a file kept
// open stays on the old version, which is removed from disk two updates
// later (on Windows, once no program holds it open).
//
// Files of different versions share inodes (hard links): an installed file
// must not be modified in place. The agent checks the SHA-256 of every
// file it reuses, so a modified file is downloaded again rather than
// propagated.
//
// Update, Rollback and Unhold lock the product's directory (.dpcache/lock)
// with flock(2), or LockFileEx on Windows, exclusive and not waited for,
// so none of them runs while another does (ErrBusy); the system releases
// the lock of a process that dies. Mirror locks its folder, all products
// together, the same way. Elsewhere (not Unix, not Windows) concurrent
// runs are not detected.
package agent
