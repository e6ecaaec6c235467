package cache_test

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"

	"github.com/dpcache/dpcache/cache"
)

// Ingest a blob, stream it while it is written, and read it back.
func Example() {
	dir, _ := os.MkdirTemp("", "cache-example")
	defer os.RemoveAll(dir)

	cfg := cache.DefaultConfig()
	cfg.Path = filepath.Join(dir, "cache.db")
	cfg.Logger = nil
	c, err := cache.Open(cfg)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()

	data := []byte("antivirus database, version 42")
	sum := sha256.Sum256(data)
	digest := hex.EncodeToString(sum[:])

	w, err := c.NewWriter(digest, int64(len(data)))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer w.Abort()                                       // keeps stored chunks for a resume if we fail below
	if _, err := w.Write(data[w.Offset():]); err != nil { // resume where a previous attempt stopped
		fmt.Println(err)
		return
	}
	if err := w.Commit(); err != nil { // checks size and SHA-256, then makes it visible
		fmt.Println(err)
		return
	}

	size, _ := c.Stat(digest)
	p := make([]byte, size)
	n, _ := c.ReadAt(digest, p, 0)
	fmt.Printf("%d bytes: %s\n", n, p[:n])
	// Output: 30 bytes: antivirus database, version 42
}
