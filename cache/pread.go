package cache

import (
	"os"
	"unsafe"

	bolt "go.etcd.io/bbolt"
)

// Blob bytes are read out of the cache file with pread(2) rather than
// copied out of bbolt's memory map. bbolt still finds each value; a value
// of a read transaction lies in the map, at the same offset as in the
// file, and its pages are not rewritten while the transaction is open, so
// the file holds the same bytes there. On a virtual machine, copying from a
// large file mapping costs 4-10 times a pread of the same bytes (page-table
// and TLB work for every 4 KiB page; the kernel copies through its own
// large-page mapping): it was a third of a DP's CPU when serving a cached
// blob.

// preadMin is the smallest copy done with pread: below it, the system
// call costs more than the copy it saves.
const preadMin = 16 << 10

// openReader opens the cache file for the pread path; nil (copies from
// the map) if it cannot be opened.
func openReader(path string) *os.File {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	return f
}

// fileOffset returns where seg, bytes of a value of tx, lies in the cache
// file; false when seg is not in tx's part of the memory map (a value of a
// write transaction's dirty page is on the heap).
func fileOffset(tx *bolt.Tx, seg []byte) (int64, bool) {
	if len(seg) == 0 {
		return 0, false
	}
	base := tx.DB().Info().Data
	at := uintptr(unsafe.Pointer(unsafe.SliceData(seg)))
	if base == 0 || at < base || at-base > uintptr(tx.Size()) || uintptr(len(seg)) > uintptr(tx.Size())-(at-base) {
		return 0, false
	}
	return int64(at - base), true
}

// copyValue copies seg, bytes of a value of tx, into dst (as long as seg).
func (c *Cache) copyValue(tx *bolt.Tx, dst, seg []byte) {
	if c.file != nil && len(seg) >= preadMin {
		if off, ok := fileOffset(tx, seg); ok {
			if n, err := c.file.ReadAt(dst, off); err == nil && n == len(dst) {
				return
			}
		}
	}
	copy(dst, seg)
}
