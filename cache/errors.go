package cache

import "errors"

// Sentinel errors returned by the cache, always wrapped with context (which
// digest, path or product). Match them with [errors.Is].
var (
	// ErrNotFound is returned when a blob is not held whole (it is absent or
	// still pending), or when a document, version or record does not exist.
	ErrNotFound = errors.New("not found")

	// ErrExists is returned by [Cache.NewWriter] when the blob is already held
	// whole: there is nothing to ingest.
	ErrExists = errors.New("already held whole")

	// ErrBusy is returned when another [Writer] (or a [Cache.DeleteBlob]) is
	// working on the same digest. Retry later or wait for the other writer.
	ErrBusy = errors.New("busy: another writer holds this digest")

	// ErrTooLarge is returned by [Writer.Write] when the bytes would go past
	// the size announced to [Cache.NewWriter]. Nothing of that write is
	// stored; the writer is still usable (Abort or Discard it).
	ErrTooLarge = errors.New("more bytes than the announced size")

	// ErrSizeMismatch is returned by [Writer.Commit] when fewer bytes than the
	// announced size were written. The full chunks stay pending for a resume.
	ErrSizeMismatch = errors.New("size mismatch")

	// ErrDigestMismatch is returned by [Writer.Commit] when the SHA-256 of the
	// bytes written differs from the digest. The pending blob is deleted.
	ErrDigestMismatch = errors.New("sha256 mismatch")

	// ErrIncomplete is returned by [Cache.PutVersion] when a blob the version
	// references is not held whole; the message names the first such digest.
	ErrIncomplete = errors.New("version incomplete: blob not held whole")

	// ErrInvalid is returned for malformed arguments: a digest that is not 64
	// lower-case hex characters, a negative offset or size, an empty or
	// malformed name, an invalid Config.
	ErrInvalid = errors.New("invalid argument")

	// ErrWriterDone is returned when a [Writer] is used after Commit, Abort
	// or Discard (or after a failed Commit).
	ErrWriterDone = errors.New("writer already finished")

	// ErrClosed is returned by every method once [Cache.Close] was called.
	ErrClosed = errors.New("cache closed")

	// ErrCorrupt is returned when the file holds something the cache did not
	// write: an undecodable record, a missing chunk of a whole blob, or a file
	// that fails bbolt's consistency check after an unclean shutdown.
	ErrCorrupt = errors.New("cache corrupt")

	// ErrFull means a bounded set of records (endpoint reports) holds as
	// many as it may: a new key is refused, existing ones still update.
	ErrFull = errors.New("record limit reached")
)
