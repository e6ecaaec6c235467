package cache

import (
	"fmt"
	"log/slog"
	"time"
)

// Freelist types, for [Config.FreelistType] (bbolt's names).
const (
	FreelistMap   = "hashmap"
	FreelistArray = "array"
)

// Config configures a [Cache]. Start from [DefaultConfig] and set Path; every
// field is checked by [Config.Validate], which [Open] calls.
type Config struct {
	// Path is the bbolt file. Required. Its directory must exist.
	Path string

	// ChunkSize is the number of bytes per stored chunk of a blob (the last
	// chunk of a blob may be shorter). Default 256 KiB: smaller chunks mean
	// less rewriting per transaction (see FlushSize); 1 MiB chunks ingest
	// about 10-20% slower, 4 MiB ones half as fast. Changing it is safe:
	// each blob records the chunk size it was written with.
	ChunkSize int

	// FlushSize is how many bytes of full chunks a Writer buffers before it
	// queues them to be stored (see WriteBehind); it is rounded up to a
	// multiple of ChunkSize. Larger batches cost memory but rewrite less:
	// bbolt keeps at least two values per leaf page, so every transaction
	// copies again the two to four chunks already in the last leaf it
	// touches, and syncs twice. Default 8 MiB; below 4 MiB throughput drops
	// fast (1 MiB batches of 1 MiB chunks: a third of the speed).
	FlushSize int

	// WriteBehind bounds the bytes of full batches a Writer keeps queued
	// for storing while the caller goes on writing (rounded down to a
	// multiple of FlushSize, at least one batch). The store goroutine
	// writes all that is queued in one transaction, so a slow disk gets
	// larger transactions rather than stalling the caller at once, and the
	// queued bytes are read from memory (Writer.ReadBufferedAt) until they
	// are stored. A Writer holds at most WriteBehind + 2 x FlushSize bytes of
	// buffers, and the transaction storing them copies them once more into
	// bbolt's pages. Default 16 MiB.
	WriteBehind int

	// NoSync skips fdatasync on the transactions that store chunks during an
	// ingest. Commit still syncs the file before, and in, the transaction
	// that makes a blob whole, so a whole blob is always durable; all other
	// writes (documents, versions, records, deletes) are always synced.
	// It is safe against a killed process, not against power loss: see the
	// package doc, # Caveats. With the default batches it gained nothing in
	// BenchmarkIngestOptions (the final sync then runs alone instead of
	// overlapping with hashing). Default false.
	NoSync bool

	// NoFreelistSync stops bbolt from writing its freelist at each commit;
	// Open then rebuilds it by scanning the file. Default false.
	NoFreelistSync bool

	// FreelistType is bbolt's freelist backend: FreelistMap ("hashmap") or
	// FreelistArray ("array"). Default FreelistMap, which stays fast when
	// evictions leave many free runs.
	FreelistType string

	// InitialMmapSize is the size bbolt maps at Open. Read transactions block
	// a writer that must grow the mapping; a mapping larger than the file
	// avoids that (it costs address space only, not memory or disk).
	// Default 1 GiB.
	InitialMmapSize int

	// AllocSize is the step by which the file grows (bbolt truncates and
	// syncs at each step). Default 64 MiB.
	AllocSize int

	// MmapFlags are passed to mmap (for example syscall.MAP_POPULATE).
	// Default 0.
	MmapFlags int

	// OpenTimeout bounds the wait for the file lock at Open when another
	// process holds the file. Default 5s; 0 waits forever.
	OpenTimeout time.Duration

	// CheckAfterCrash runs bbolt's consistency check at Open when the
	// previous session did not Close and ingested with NoSync. Default true.
	CheckAfterCrash bool

	// Logger receives the cache's logs (component=cache). Default
	// slog.Default(); nil discards.
	Logger *slog.Logger
}

// DefaultConfig returns the defaults documented on each [Config] field; only
// Path is left for the caller to set.
func DefaultConfig() Config {
	return Config{
		ChunkSize:       256 << 10,
		FlushSize:       8 << 20,
		WriteBehind:     16 << 20,
		NoSync:          false,
		NoFreelistSync:  false,
		FreelistType:    FreelistMap,
		InitialMmapSize: 1 << 30,
		AllocSize:       64 << 20,
		OpenTimeout:     5 * time.Second,
		CheckAfterCrash: true,
		Logger:          slog.Default(),
	}
}

// Limits enforced by Validate.
const (
	minChunkSize = 4 << 10
	maxChunkSize = 64 << 20
	maxFlushSize = 1 << 30
)

// Validate reports the first invalid field, wrapping [ErrInvalid].
func (c Config) Validate() error {
	switch {
	case c.Path == "":
		return fmt.Errorf("cache config: Path is empty: %w", ErrInvalid)
	case c.ChunkSize < minChunkSize || c.ChunkSize > maxChunkSize:
		return fmt.Errorf("cache config: ChunkSize %d out of range [%d, %d] (start from DefaultConfig): %w",
			c.ChunkSize, minChunkSize, maxChunkSize, ErrInvalid)
	case c.FlushSize < 0 || c.FlushSize > maxFlushSize:
		return fmt.Errorf("cache config: FlushSize %d out of range [0, %d]: %w", c.FlushSize, maxFlushSize, ErrInvalid)
	case c.WriteBehind < 0 || c.WriteBehind > maxFlushSize:
		return fmt.Errorf("cache config: WriteBehind %d out of range [0, %d]: %w", c.WriteBehind, maxFlushSize, ErrInvalid)
	case c.FreelistType != FreelistMap && c.FreelistType != FreelistArray:
		return fmt.Errorf("cache config: FreelistType %q is neither %q nor %q: %w",
			c.FreelistType, FreelistMap, FreelistArray, ErrInvalid)
	case c.InitialMmapSize < 0:
		return fmt.Errorf("cache config: InitialMmapSize %d is negative: %w", c.InitialMmapSize, ErrInvalid)
	case c.AllocSize < 0:
		return fmt.Errorf("cache config: AllocSize %d is negative: %w", c.AllocSize, ErrInvalid)
	case c.OpenTimeout < 0:
		return fmt.Errorf("cache config: OpenTimeout %s is negative: %w", c.OpenTimeout, ErrInvalid)
	}
	return nil
}

// flushChunks is the number of full chunks of chunkSize bytes a Writer
// stores per transaction.
func (c Config) flushChunks(chunkSize int) int {
	n := (c.FlushSize + chunkSize - 1) / chunkSize
	return max(n, 1)
}
