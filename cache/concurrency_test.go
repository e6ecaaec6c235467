package cache

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
)

// streamPending reads blob d while w ingests it, as a node streams a blob to
// a requester during a fetch.
func streamPending(ctx context.Context, c *Cache, w *Writer, d string) ([]byte, error) {
	var out []byte
	p := make([]byte, 5000)
	for off := int64(0); ; {
		progress := w.Progress()
		n, err := c.ReadPendingAt(d, p, off)
		out = append(out, p[:n]...)
		off += int64(n)
		switch {
		case err == io.EOF:
			return out, nil
		case err != nil:
			return out, err
		case n == 0:
			select {
			case <-progress:
			case <-ctx.Done():
				return out, fmt.Errorf("stream %s at %d: %w", d, off, ctx.Err())
			}
		}
	}
}

func TestCache_ConcurrentReadersWriters(t *testing.T) {
	t.Parallel()
	c := newTestCache(t, func(cfg *Config) { cfg.FlushSize = 4096; cfg.NoSync = true })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	whole, dw := blob(100, 20*4096+9)
	ingest(t, c, dw, whole, 4096)

	const writers = 3
	var g errgroup.Group
	readersDone := make(chan struct{})
	for i := range writers {
		data, d := blob(uint64(200+i), 40*4096+i)
		w, err := c.NewWriter(d, int64(len(data)))
		if err != nil {
			t.Fatal(err)
		}
		g.Go(func() error { // the fetch
			defer w.Abort()
			for rest := data; len(rest) > 0; {
				n := min(len(rest), 1000+i*700)
				if _, err := w.Write(rest[:n]); err != nil {
					return err
				}
				rest = rest[n:]
			}
			return w.Commit()
		})
		for range 2 { // requesters streaming it meanwhile
			g.Go(func() error {
				got, err := streamPending(ctx, c, w, d)
				if err != nil {
					return err
				}
				if !bytes.Equal(got, data) {
					return fmt.Errorf("streamed %d bytes of %s: content differs", len(got), d)
				}
				return nil
			})
		}
	}
	var rg errgroup.Group
	for i := range 3 { // readers of a whole blob
		rg.Go(func() error {
			r := rand.New(rand.NewPCG(uint64(i), 1))
			p := make([]byte, 6000)
			for {
				select {
				case <-readersDone:
					return nil
				default:
				}
				off := r.Int64N(int64(len(whole)))
				n, err := c.ReadAt(dw, p, off)
				if err != nil && err != io.EOF {
					return err
				}
				if !bytes.Equal(p[:n], whole[off:off+int64(n)]) {
					return fmt.Errorf("ReadAt(%d): wrong bytes", off)
				}
			}
		})
	}
	rg.Go(func() error { // housekeeping
		for {
			select {
			case <-readersDone:
				return nil
			default:
			}
			if _, err := c.Stats(); err != nil {
				return err
			}
			if _, err := c.PendingBlobs(); err != nil {
				return err
			}
			if err := c.PutRecord("r", "k", []byte("v")); err != nil {
				return err
			}
		}
	})
	err := g.Wait()
	close(readersDone)
	if err := errors.Join(err, rg.Wait()); err != nil {
		t.Fatal(err)
	}
	s, err := c.Stats()
	if err != nil || s.Blobs != writers+1 || s.Pending != 0 {
		t.Fatalf("Stats = %+v, %v", s, err)
	}
}

// The crash test runs a child process (this test binary) that ingests and is
// killed with SIGKILL mid-ingest.
const (
	crashEnv       = "DPCACHE_CACHE_CRASH_CHILD"
	crashChunk     = 64 << 10
	crashSize      = 48 << 20
	crashReadyAt   = 4 << 20
	crashWholeSeed = 300
	crashSeed      = 301
)

func crashConfig(path string) Config {
	cfg := testConfig(path)
	cfg.ChunkSize = crashChunk
	cfg.FlushSize = 4 * crashChunk
	cfg.NoSync = true
	return cfg
}

// TestCache_CrashChild is the child of TestCache_Crash; it does nothing
// unless run by it.
func TestCache_CrashChild(t *testing.T) {
	path := os.Getenv(crashEnv)
	if path == "" {
		t.Skip("run by TestCache_Crash only")
	}
	c, err := Open(crashConfig(path))
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(2)
	}
	whole, dw := blob(crashWholeSeed, 1<<20+3)
	ingest(t, c, dw, whole, 1<<16)
	data, d := blob(crashSeed, crashSize)
	w, err := c.NewWriter(d, crashSize)
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(2)
	}
	ready := false
	for off := 0; off < crashSize-100; {
		n := min(50000, crashSize-100-off)
		if _, err := w.Write(data[off : off+n]); err != nil {
			fmt.Println("error:", err)
			os.Exit(2)
		}
		off += n
		if !ready && w.Flushed() >= crashReadyAt {
			fmt.Println("ready") // the parent kills us from now on
			ready = true
		}
	}
	_, _ = io.Copy(io.Discard, os.Stdin) // wait to be killed, never commit
	os.Exit(3)
}

func TestCache_Crash(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns a process and writes 48 MiB")
	}
	t.Parallel()
	path := filepath.Join(t.TempDir(), "cache.db")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestCache_CrashChild$")
	cmd.Env = append(os.Environ(), crashEnv+"="+path)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if strings.TrimSpace(line) != "ready" {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("child said %q (%v); stderr: %s", line, err, stderr.String())
	}
	if err := cmd.Process.Kill(); err != nil { // SIGKILL, mid-ingest
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if ws, ok := cmd.ProcessState.Sys().(interface{ Signaled() bool }); !ok || !ws.Signaled() {
		t.Fatalf("child not killed by a signal: %v", cmd.ProcessState)
	}

	// The file opens, after the consistency check a NoSync session calls for.
	var logs syncBuffer
	cfg := crashConfig(path)
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	c := mustOpen(t, cfg)
	if !strings.Contains(logs.String(), "consistency check passed") {
		t.Fatalf("no consistency check after the crash; logs:\n%s", logs.String())
	}
	whole, dw := blob(crashWholeSeed, 1<<20+3)
	if got := readAll(t, c, dw, 1<<20); !bytes.Equal(got, whole) {
		t.Fatal("the blob committed before the crash differs")
	}
	data, d := blob(crashSeed, crashSize)
	if _, err := c.Stat(d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Stat of the blob being ingested at the crash = %v, want ErrNotFound", err)
	}
	if _, err := c.ReadAt(d, make([]byte, 10), 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("ReadAt of the blob being ingested at the crash = %v, want ErrNotFound", err)
	}
	bi, err := c.Blob(d)
	if err != nil || bi.Whole || bi.Stored < crashReadyAt || bi.Stored%crashChunk != 0 {
		t.Fatalf("Blob after the crash = %+v, %v; want pending with >= %d bytes", bi, err, crashReadyAt)
	}
	// Resume completes, and the content is right.
	w, err := c.NewWriter(d, crashSize)
	if err != nil {
		t.Fatal(err)
	}
	if w.Offset() != bi.Stored {
		t.Fatalf("resume Offset %d, want %d", w.Offset(), bi.Stored)
	}
	t.Logf("killed with %d of %d bytes stored; resuming", bi.Stored, crashSize)
	writeAll(t, w, data[w.Offset():], 1<<20)
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, c, d, 1<<20); !bytes.Equal(got, data) {
		t.Fatal("content differs after resuming past the crash")
	}
}
