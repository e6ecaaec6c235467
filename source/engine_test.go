package source_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/dpcache/dpcache/e2e/testenv"
	"github.com/dpcache/dpcache/source"
	"github.com/dpcache/dpcache/source/failover"
)

// memSink is a Sink in memory that verifies the blob's SHA-256 as a cache
// writer or a partial download does, and records which sources delivered.
type memSink struct {
	digest string
	buf    bytes.Buffer
	resets int
	from   []string
	failAt int64 // >0: Write fails once the sink holds this many bytes (a full disk)
}

func (s *memSink) Offset() int64 { return int64(s.buf.Len()) }

func (s *memSink) Write(p []byte) (int, error) {
	if s.failAt > 0 && int64(s.buf.Len()+len(p)) >= s.failAt {
		return 0, errDiskFull
	}
	return s.buf.Write(p)
}

func (s *memSink) Verify() error {
	sum := sha256.Sum256(s.buf.Bytes())
	if got := hex.EncodeToString(sum[:]); got != s.digest {
		return fmt.Errorf("sha256 %s, want %s: %w", got, s.digest, source.ErrDataLoss)
	}
	return nil
}

func (s *memSink) Reset() error {
	s.buf.Reset()
	s.resets++
	return nil
}

func (s *memSink) From(src source.Source) { s.from = append(s.from, src.String()) }

var errDiskFull = errors.New("no space left on device (test)")

// TestChain_EngineConformance runs the failover engine's guarantees with
// every kind of source as the one that takes over from a misbehaving HTTP
// source (a scripted server): a folder, nginx over HTTP and HTTPS, vsftpd
// over FTP, and a real DP over gRPC. For each: a transfer cut mid-way
// resumes on the next source at the offset reached; a stalled one too,
// after StallTimeout; corrupt bytes are discarded (Sink.Reset) and the
// blob comes whole from the next source, and the corrupt source is in
// backoff, so the next fetch does not ask it at all.
func TestChain_EngineConformance(t *testing.T) {
	r := newRepo(t)
	ca := testenv.NewTestCA(t)
	ngx := testenv.StartNginxTLS(t, r.root, ca, testenv.NginxOptions{})
	ftpd := startFTP(t, r, testenv.VsftpdOptions{})
	dp := startDP(t, r.trust, ngx.URL)
	d, content := r.big()
	// The DP serves blobs that a manifest it verified names.
	if _, err := parse(t, "grpc://"+dp.GRPCAddr(), source.Options{}).Manifest(testCtx(t), r.product, r.version); err != nil {
		t.Fatal(err)
	}
	kinds := []struct {
		name string
		url  string
		opts source.Options
	}{
		{"File", r.root, source.Options{}},
		{"HTTP", ngx.URL, source.Options{}},
		{"HTTPS", ngx.TLSURL, source.Options{CAFile: ca.CAFile}},
		{"FTP", ftpd.URL, source.Options{}},
		{"GRPC", "grpc://" + dp.GRPCAddr(), source.Options{}},
	}
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			t.Parallel()
			// chain returns a Chain over a fresh scripted source and k,
			// with misbehave applied to the scripted one.
			chain := func(t *testing.T, misbehave func(s *scripted)) (*failover.Chain, *scripted, string, string) {
				s, badURL := newScripted(t, r)
				s.set(misbehave)
				bad := parse(t, badURL, source.Options{})
				good := parse(t, k.url, k.opts)
				logger := testLogger(t, slog.LevelWarn+4)
				c := failover.New([]source.Source{bad, good}, failover.Options{StallTimeout: 300 * time.Millisecond, Logger: logger})
				return c, s, bad.String(), good.String()
			}

			t.Run("ResumeOnNext", func(t *testing.T) {
				t.Parallel()
				c, s, _, good := chain(t, func(s *scripted) { s.cutAfter, s.cutTimes = 300_000, 1 })
				s.set(func(s *scripted) { s.downAfter = 1 }) // the resume from the same source fails
				sink := &memSink{digest: d}
				served, err := c.Fetch(testCtx(t), d, int64(len(content)), sink)
				checkBytes(t, "fetched blob", sink.buf.Bytes(), content, err)
				if served == nil || served.String() != good || sink.resets != 0 {
					t.Errorf("served by %v after %d resets, want %s and none", served, sink.resets, good)
				}
				if _, _, sent := s.stats(); sent != 300_000 {
					t.Errorf("the cutting source sent %d bytes, want 300000: the next source resumed at the offset", sent)
				}
			})

			t.Run("Stall", func(t *testing.T) {
				t.Parallel()
				c, _, bad, good := chain(t, func(s *scripted) { s.stallAfter = 200_000 })
				sink := &memSink{digest: d}
				served, err := c.Fetch(testCtx(t), d, int64(len(content)), sink)
				checkBytes(t, "fetched blob", sink.buf.Bytes(), content, err)
				if served == nil || served.String() != good || len(sink.from) != 2 || sink.from[0] != bad {
					t.Errorf("served by %v, sources told %q; want %s after %s", served, sink.from, good, bad)
				}
			})

			t.Run("CorruptThenBackoff", func(t *testing.T) {
				t.Parallel()
				c, s, bad, good := chain(t, func(s *scripted) { s.corruptBelow = 1000 })
				sink := &memSink{digest: d}
				served, err := c.Fetch(testCtx(t), d, int64(len(content)), sink)
				checkBytes(t, "fetched blob", sink.buf.Bytes(), content, err)
				if served == nil || served.String() != good || sink.resets != 1 {
					t.Errorf("served by %v after %d resets, want %s after 1", served, sink.resets, good)
				}
				// In backoff: the next fetch does not ask it.
				_, before, _ := s.stats()
				again := &memSink{digest: d}
				if _, err := c.Fetch(testCtx(t), d, int64(len(content)), again); err != nil {
					t.Fatal(err)
				}
				if _, after, _ := s.stats(); after != before || len(again.from) != 1 || again.from[0] != good {
					t.Errorf("after the corrupt blob: %d more requests to %s, sources %q; want none and %s alone", after-before, bad, again.from, good)
				}
			})
		})
	}
}

// TestChain_FetchErrors: what Fetch returns when it cannot finish.
func TestChain_FetchErrors(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	d, content := r.big()
	size := int64(len(content))

	t.Run("AllCorrupt", func(t *testing.T) {
		t.Parallel()
		s1, u1 := newScripted(t, r)
		s2, u2 := newScripted(t, r)
		s1.set(func(s *scripted) { s.corruptBelow = 10 })
		s2.set(func(s *scripted) { s.corruptBelow = size })
		c := failover.New([]source.Source{parse(t, u1, source.Options{}), parse(t, u2, source.Options{})}, failover.Options{Logger: testLogger(t, slog.LevelWarn+4)})
		sink := &memSink{digest: d}
		_, err := c.Fetch(testCtx(t), d, size, sink)
		var fe *failover.Error
		if !errors.As(err, &fe) || len(fe.Failures) != 2 || !errors.Is(err, source.ErrDataLoss) || errors.Is(err, source.ErrNotFound) {
			t.Fatalf("two corrupt sources: %v, want a *FailoverError of 2 wrapping ErrDataLoss", err)
		}
		if sink.resets != 2 || sink.Offset() != 0 {
			t.Errorf("sink reset %d times, holds %d bytes; want 2 and none", sink.resets, sink.Offset())
		}
	})

	t.Run("AllNotFound", func(t *testing.T) {
		t.Parallel()
		c := failover.New([]source.Source{parse(t, t.TempDir(), source.Options{}), parse(t, t.TempDir(), source.Options{})}, failover.Options{Logger: testLogger(t, slog.LevelWarn+4)})
		_, err := c.Fetch(testCtx(t), d, size, &memSink{digest: d})
		if !errors.Is(err, source.ErrNotFound) || errors.Is(err, source.ErrUnavailable) {
			t.Errorf("two empty folders: %v, want ErrNotFound only", err)
		}
	})

	t.Run("NotFoundAndDown", func(t *testing.T) {
		t.Parallel()
		s, u := newScripted(t, r)
		s.set(func(s *scripted) { s.down = true })
		c := failover.New([]source.Source{parse(t, t.TempDir(), source.Options{}), parse(t, u, source.Options{})}, failover.Options{Logger: testLogger(t, slog.LevelWarn+4)})
		_, err := c.Fetch(testCtx(t), d, size, &memSink{digest: d})
		if errors.Is(err, source.ErrNotFound) || !errors.Is(err, source.ErrUnavailable) {
			t.Errorf("one empty folder, one down: %v, want ErrUnavailable and not ErrNotFound", err)
		}
	})

	t.Run("TooLong", func(t *testing.T) {
		t.Parallel()
		c := failover.New([]source.Source{parse(t, r.root, source.Options{})}, failover.Options{Logger: testLogger(t, slog.LevelWarn+4)})
		sink := &memSink{digest: d}
		_, err := c.Fetch(testCtx(t), d, size-1, sink) // the manifest says one byte less
		if !errors.Is(err, source.ErrDataLoss) || sink.Offset() != 0 {
			t.Errorf("a source longer than the size: %v, sink holds %d; want ErrDataLoss and nothing kept", err, sink.Offset())
		}
	})

	t.Run("SinkFails", func(t *testing.T) {
		t.Parallel()
		s, u := newScripted(t, r)
		c := failover.New([]source.Source{parse(t, u, source.Options{}), parse(t, r.root, source.Options{})}, failover.Options{Logger: testLogger(t, slog.LevelWarn+4)})
		_, err := c.Fetch(testCtx(t), d, size, &memSink{digest: d, failAt: 100_000})
		var fe *failover.Error
		if !errors.Is(err, errDiskFull) || errors.As(err, &fe) {
			t.Errorf("a full disk: %v, want the sink's error as it is", err)
		}
		if _, blobs, _ := s.stats(); blobs != 1 {
			t.Errorf("the first source was asked %d times, want once: a local failure is no reason to try another", blobs)
		}
		if c.Sources()[0].String() != u || !healthy(c, u) {
			t.Errorf("the source was blamed for the sink's failure")
		}
	})

	t.Run("ResumeWhole", func(t *testing.T) {
		t.Parallel()
		// A sink that already holds every byte (an interrupted run) is
		// verified, not fetched again.
		c := failover.New([]source.Source{parse(t, t.TempDir(), source.Options{})}, failover.Options{Logger: testLogger(t, slog.LevelWarn+4)})
		sink := &memSink{digest: d}
		sink.buf.Write(content)
		if served, err := c.Fetch(testCtx(t), d, size, sink); err != nil || served != nil {
			t.Errorf("a whole sink: served by %v, %v; want nothing asked", served, err)
		}
	})
}

// healthy reports whether a Fetch now starts with the named source.
func healthy(c *failover.Chain, name string) bool {
	return c.Sources()[0].String() == name && c.Order()[0] == name
}
