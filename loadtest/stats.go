package loadtest

import (
	"context"
	"errors"
	"io"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/source"
)

// Summary is the outcome of a load run.
type Summary struct {
	Product string
	From    string // the version the endpoints started from; "" for a fresh install
	Version string // the newest version when the run started
	Serial  uint64
	// BlobsPerEndpoint and BytesPerEndpoint are what one endpoint reads:
	// the blobs of Version whose digest is not in From's manifest.
	BlobsPerEndpoint int
	BytesPerEndpoint int64
	// Signatures tells whether documents' signatures were checked
	// (Config.Trust), Verified whether blobs' digests were (Config.Verify).
	Signatures, Verified bool

	// Endpoints is how many endpoints started; Updated of them reported
	// "updated", Errors failed (one count per endpoint, at its first
	// error). A run that was interrupted has Endpoints below the Config's.
	Endpoints, Updated, Errors int
	// ErrorKinds counts failures by step and kind, most frequent first.
	ErrorKinds []ErrorKind
	// Elapsed is the time from the first endpoint's start to the last
	// one's end.
	Elapsed time.Duration
	// P50, P99 and Max are the time from an endpoint's start to its
	// report, over the endpoints that updated.
	P50, P99, Max time.Duration
	// FirstP50 and FirstP99 are the time from an endpoint's start to its
	// first answer (GetLatest; the connection included), over the
	// endpoints that got one.
	FirstP50, FirstP99 time.Duration
	// Bytes is the blob bytes read by all endpoints.
	Bytes int64

	// Node is the DP's memory (Config.NodePID); nil when not sampled.
	Node *Memory
	// Self is this process's own memory during the run (zero without
	// /proc).
	Self Memory
}

// Memory is what the samples of one process's /proc/PID/status showed.
type Memory struct {
	PID int
	// RssAnonStart is RssAnon at the run's start (the DP idle, or as the
	// run found it); the peaks are over the run's samples.
	RssAnonStart, RssAnonPeak, VmRSSPeak int64
	Samples                              int
}

// ErrorKind is one step's failures of one kind.
type ErrorKind struct {
	// Kind is "STEP: KIND": the step (dial, GetLatest, GetManifest,
	// ReadBlob, ReportStatus) and what went wrong (unavailable, refused,
	// not-found, data-loss, invalid, short, digest, signature, mismatch,
	// canceled, other).
	Kind  string
	Count int
	// Example is the first such error's text.
	Example string
}

// PerMinute is the updated endpoints per minute of the run.
func (s *Summary) PerMinute() float64 {
	if s.Elapsed <= 0 {
		return 0
	}
	return float64(s.Updated) / s.Elapsed.Minutes()
}

// percentile returns the p-th percentile (0 < p <= 100) of sorted by the
// nearest-rank method: the smallest value with at least p% of the values
// at or below it. Zero for no values.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(float64(len(sorted))*p/100)) - 1
	return sorted[min(max(rank, 0), len(sorted)-1)]
}

// summarize fills s's times from the per-endpoint durations (negative for
// an endpoint without one), and sorts its error kinds.
func (s *Summary) summarize(update, first []time.Duration, kinds map[string]*ErrorKind) {
	ok := func(ds []time.Duration) []time.Duration {
		out := make([]time.Duration, 0, len(ds))
		for _, d := range ds {
			if d >= 0 {
				out = append(out, d)
			}
		}
		slices.Sort(out)
		return out
	}
	u, f := ok(update), ok(first)
	s.P50, s.P99 = percentile(u, 50), percentile(u, 99)
	if len(u) > 0 {
		s.Max = u[len(u)-1]
	}
	s.FirstP50, s.FirstP99 = percentile(f, 50), percentile(f, 99)
	s.ErrorKinds = s.ErrorKinds[:0]
	for _, k := range kinds {
		s.ErrorKinds = append(s.ErrorKinds, *k)
	}
	slices.SortFunc(s.ErrorKinds, func(a, b ErrorKind) int {
		if a.Count != b.Count {
			return b.Count - a.Count
		}
		return strings.Compare(a.Kind, b.Kind)
	})
}

// stepError is an endpoint's failure at one step of its update.
type stepError struct {
	step string
	err  error
}

func (e *stepError) Error() string { return e.step + ": " + e.err.Error() }
func (e *stepError) Unwrap() error { return e.err }

// kindOf names err's step and kind for ErrorKind.Kind.
func kindOf(err error) string {
	step := "other"
	var se *stepError
	if errors.As(err, &se) {
		step = se.step
	}
	var kind string
	switch {
	case errors.Is(err, context.Canceled):
		kind = "canceled"
	case errors.Is(err, source.ErrRefused):
		kind = "refused"
	case errors.Is(err, source.ErrNotFound):
		kind = "not-found"
	case errors.Is(err, ErrDigest):
		kind = "digest"
	case errors.Is(err, source.ErrDataLoss):
		kind = "data-loss"
	case errors.Is(err, io.ErrUnexpectedEOF):
		kind = "short"
	case errors.Is(err, source.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		kind = "unavailable"
	case errors.Is(err, manifest.ErrBadSignature), errors.Is(err, manifest.ErrUntrustedKey), errors.Is(err, manifest.ErrMissingSignature):
		kind = "signature"
	case errors.Is(err, manifest.ErrMismatch):
		kind = "mismatch"
	case errors.Is(err, source.ErrInvalid), errors.Is(err, manifest.ErrInvalid):
		kind = "invalid"
	default:
		kind = "other"
	}
	return step + ": " + kind
}
