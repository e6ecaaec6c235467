package failover

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dpcache/dpcache/source"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestError_Is: a failover's error says "not found" only when every source
// said so; otherwise it is unavailable and carries each source's cause.
func TestError_Is(t *testing.T) {
	t.Parallel()
	notFound := fmt.Errorf("a: %w", source.ErrNotFound)
	corrupt := fmt.Errorf("b: %w", source.ErrDataLoss)
	for _, tc := range []struct {
		name              string
		failures          []Failure
		notFound, unavail bool
		dataLoss          bool
	}{
		{"AllNotFound", []Failure{{"a", notFound}, {"b", notFound}}, true, false, false},
		{"OneNotFoundOneCorrupt", []Failure{{"a", notFound}, {"b", corrupt}}, false, true, true},
		{"None", nil, false, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := &Error{What: "x", Failures: tc.failures}
			if errors.Is(err, source.ErrNotFound) != tc.notFound || errors.Is(err, source.ErrUnavailable) != tc.unavail ||
				errors.Is(err, source.ErrDataLoss) != tc.dataLoss || !errors.Is(err, ErrAllFailed) {
				t.Errorf("%v: Is(NotFound)=%v Is(Unavailable)=%v Is(DataLoss)=%v", err, errors.Is(err, source.ErrNotFound),
					errors.Is(err, source.ErrUnavailable), errors.Is(err, source.ErrDataLoss))
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error spans lines: %q", err)
			}
		})
	}
}

// TestHealth_Backoff: a failure puts a source in backoff, doubling up to
// the maximum; a burst of failures seen by attempts of one generation
// counts once; a success clears it.
func TestHealth_Backoff(t *testing.T) {
	t.Parallel()
	h := NewHealth(Backoff{Initial: time.Minute, Max: 3 * time.Minute})
	gen := h.states([]string{"s"})[0].gen
	first := h.fail("s", gen)
	again := h.fail("s", gen) // the same burst
	if first < 59*time.Second || again > first {
		t.Errorf("backoff %v then %v for one burst, want about 1m once", first, again)
	}
	gen = h.states([]string{"s"})[0].gen
	if d := h.fail("s", gen); d < 119*time.Second {
		t.Errorf("second failure: backoff %v, want about 2m", d)
	}
	h.failNow("s")
	h.failNow("s")
	if d := time.Until(h.Backoff("s")); d > 3*time.Minute {
		t.Errorf("backoff %v past the maximum", d)
	}
	h.succeed("s")
	if !h.Backoff("s").IsZero() {
		t.Error("a success left the source in backoff")
	}
}

// TestHealth_Status: every blamed failure counts, even within one burst;
// FailingSince is the first of a run of failures and a success clears it
// and dates LastOK.
func TestHealth_Status(t *testing.T) {
	t.Parallel()
	h := NewHealth(Backoff{Initial: time.Minute})
	if st := h.Status("s"); st != (SourceStatus{}) {
		t.Errorf("unknown source: %+v, want the zero status", st)
	}
	gen := h.states([]string{"s"})[0].gen
	h.fail("s", gen)
	h.fail("s", gen) // one burst for the backoff, two errors for operators
	st := h.Status("s")
	if st.Errors != 2 || st.FailingSince.IsZero() || !st.LastOK.IsZero() {
		t.Errorf("after two failures: %+v", st)
	}
	first := st.FailingSince
	h.failNow("s")
	if st := h.Status("s"); st.Errors != 3 || !st.FailingSince.Equal(first) {
		t.Errorf("a third failure moved FailingSince or missed the count: %+v (first %v)", st, first)
	}
	h.succeed("s")
	if st := h.Status("s"); st.Errors != 3 || !st.FailingSince.IsZero() || st.LastOK.IsZero() {
		t.Errorf("after a success: %+v", st)
	}
	h.succeed("never-failed")
	if st := h.Status("never-failed"); st.LastOK.IsZero() || st.Errors != 0 {
		t.Errorf("a source that only succeeded: %+v", st)
	}
}

// TestRetry: Retry keeps the message and adds ErrRetry.
func TestRetry(t *testing.T) {
	t.Parallel()
	base := errors.New("bad signature")
	err := Retry(base)
	if err.Error() != "bad signature" || !errors.Is(err, ErrRetry) || !errors.Is(err, base) {
		t.Errorf("Retry(%v) = %v", base, err)
	}
}

// TestChain_TierOrder: backoff moves a source after the others of its tier
// only: a peer in backoff is still asked before the internet link.
func TestChain_TierOrder(t *testing.T) {
	t.Parallel()
	peer1, peer2, up1, up2 := source.NewFile("/peer1"), source.NewFile("/peer2"), source.NewFile("/up1"), source.NewFile("/up2")
	tier := map[source.Source]int{peer1: 0, peer2: 0, up1: 1, up2: 1}
	h := NewHealth(Backoff{Initial: time.Minute})
	c := New([]source.Source{peer1, peer2, up1, up2}, Options{Health: h, Tier: func(s source.Source) int { return tier[s] }})
	h.failNow(peer1.String())
	h.failNow(up1.String())
	want := []string{peer2.String(), peer1.String(), up2.String(), up1.String()}
	if got := c.Order(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("order %v, want %v", got, want)
	}
	flat := New([]source.Source{peer1, peer2, up1, up2}, Options{Health: h})
	want = []string{peer2.String(), up2.String(), peer1.String(), up1.String()}
	if got := flat.Order(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("without tiers: order %v, want %v", got, want)
	}
}

// TestChain_Failed: a failure the caller saw outside the chain moves the
// source after the others when it is the source's fault, and not when it
// is a missing blob.
func TestChain_Failed(t *testing.T) {
	t.Parallel()
	dp1, dp2, up := source.NewFile("/dp1"), source.NewFile("/dp2"), source.NewFile("/up")
	c := New([]source.Source{dp1, dp2, up}, Options{Health: NewHealth(Backoff{Initial: time.Minute})})
	c.Failed(dp1, fmt.Errorf("grpc://dp1: chunks: %w", source.ErrNotFound))
	c.Failed(dp2, nil)
	if got, want := fmt.Sprint(c.Order()), fmt.Sprint([]string{dp1.String(), dp2.String(), up.String()}); got != want {
		t.Errorf("after a missing blob: order %v, want %v", got, want)
	}
	c.Failed(dp1, fmt.Errorf("grpc://dp1: stream: %w", source.ErrUnavailable))
	if got, want := fmt.Sprint(c.Order()), fmt.Sprint([]string{dp2.String(), up.String(), dp1.String()}); got != want {
		t.Errorf("after a failed read: order %v, want %v", got, want)
	}
}

// retracting is a source that, at its first request, sends all but the
// last byte of a blob wrong and then takes them back with an error wrapping
// source.ErrDataLoss (what a DP does when the peer it relayed turns out to
// have lied); from then on it serves the blob right.
type retracting struct {
	content  []byte
	every    bool // take the bytes back at every request
	requests int
}

func (s *retracting) Latest(context.Context, string) (source.Signed, error) {
	return source.Signed{}, source.ErrNotFound
}

func (s *retracting) Manifest(context.Context, string, string) (source.Signed, error) {
	return source.Signed{}, source.ErrNotFound
}

func (s *retracting) Blob(_ context.Context, _ string, off int64) (io.ReadCloser, error) {
	s.requests++
	if s.requests > 1 && !s.every {
		return io.NopCloser(bytes.NewReader(s.content[off:])), nil
	}
	bad := make([]byte, len(s.content)-1)
	return io.NopCloser(io.MultiReader(bytes.NewReader(bad), errReader{fmt.Errorf("the bytes sent were corrupt; read again: %w", source.ErrDataLoss)})), nil
}

func (s *retracting) String() string { return "grpc://retracting" }
func (s *retracting) Close() error   { return nil }

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

// bufSink is a Sink in memory that checks the SHA-256 at the end.
type bufSink struct {
	digest string
	buf    bytes.Buffer
	resets int
}

func (s *bufSink) Offset() int64               { return int64(s.buf.Len()) }
func (s *bufSink) Write(p []byte) (int, error) { return s.buf.Write(p) }
func (s *bufSink) Reset() error                { s.resets++; s.buf.Reset(); return nil }
func (s *bufSink) Verify() error {
	if sum := sha256.Sum256(s.buf.Bytes()); hex.EncodeToString(sum[:]) != s.digest {
		return fmt.Errorf("digest mismatch: %w", source.ErrDataLoss)
	}
	return nil
}

// TestChain_SourceRetracts: a source that says the bytes it sent were
// corrupt (DataLoss mid-stream) is read again from byte 0, once, into a
// reset sink, so an endpoint whose only source is a DP that relayed a
// lying peer still gets the blob; a source that does it twice is left.
func TestChain_SourceRetracts(t *testing.T) {
	t.Parallel()
	content := bytes.Repeat([]byte("antivirus record "), 4096)
	sum := sha256.Sum256(content)
	digest := hex.EncodeToString(sum[:])
	s := &retracting{content: content}
	sink := &bufSink{digest: digest}
	c := New([]source.Source{s}, Options{})
	if _, err := c.Fetch(context.Background(), digest, int64(len(content)), sink); err != nil {
		t.Fatalf("Fetch from a source that took its bytes back once: %v", err)
	}
	if !bytes.Equal(sink.buf.Bytes(), content) || sink.resets != 1 || s.requests != 2 {
		t.Errorf("got %d bytes after %d resets and %d requests; want the blob after 1 reset and 2 requests", sink.buf.Len(), sink.resets, s.requests)
	}

	liar := &retracting{content: content, every: true}
	if _, err := New([]source.Source{liar}, Options{}).Fetch(context.Background(), digest, int64(len(content)), &bufSink{digest: digest}); err == nil {
		t.Error("Fetch from a source that takes its bytes back every time succeeded")
	}
	if liar.requests != 2 {
		t.Errorf("a source that takes its bytes back every time was asked %d times, want 2 (once again from the start, then left)", liar.requests)
	}
}

// An *Error says a cause shared by every source once, and otherwise each
// source's own cause, without repeating the path asked or the sentinel.
func TestError_Compact(t *testing.T) {
	t.Parallel()
	nf := func(src string) error { return fmt.Errorf("%s: av/latest.json: %w", src, source.ErrNotFound) }
	refused := func(src, addr string) error {
		return fmt.Errorf("%s: av/latest.json: %w: dial tcp %s: connect: connection refused", src, source.ErrUnavailable, addr)
	}
	for _, tc := range []struct {
		name string
		e    *Error
		want string
	}{
		{"not found everywhere", &Error{What: "av/latest.json", Advice: "check the product name", Failures: []Failure{
			{"http://a/", nf("http://a/")}, {"ftp://b/", nf("ftp://b/")}, {"file:///c", nf("file:///c")}}},
			"av/latest.json: not found on any of 3 sources (http://a/, ftp://b/, file:///c); check the product name"},
		{"not found on one", &Error{What: "av/latest.json", Failures: []Failure{{"http://a/", nf("http://a/")}}},
			"av/latest.json: not found on http://a/"},
		{"refused alike", &Error{What: "av/latest.json", hint: func(error) string { return "check the network" }, Failures: []Failure{
			{"http://a:1/", refused("http://a:1/", "10.0.0.1:1")}, {"http://b:2/", refused("http://b:2/", "10.0.0.2:2")}}},
			"av/latest.json: every source failed alike (http://a:1/, http://b:2/): connection refused; check the network"},
		{"different causes", &Error{What: "av/latest.json", Failures: []Failure{
			{"http://a:1/", refused("http://a:1/", "10.0.0.1:1")}, {"file:///c", nf("file:///c")}}},
			"av/latest.json: every source failed: http://a:1/: connection refused; file:///c: not found"},
	} {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("%s:\n got %q\nwant %q", tc.name, got, tc.want)
		}
		if tc.name == "not found everywhere" && (!errors.Is(tc.e, source.ErrNotFound) || !errors.Is(tc.e, ErrAllFailed)) {
			t.Errorf("%s: errors.Is lost its sentinels", tc.name)
		}
	}
}

// TestBlames: a DP refusing a request that looped back to it is not the
// source's fault (no backoff); an unavailable source is.
func TestBlames(t *testing.T) {
	t.Parallel()
	loop, err := source.ParseVia([]string{strings.TrimSuffix(strings.Repeat("0123456789abcdef,", source.MaxHops+1), ",")})
	if !errors.Is(err, source.ErrLoop) || loop != nil {
		t.Fatalf("ParseVia of a chain past the limit: %v, want ErrLoop", err)
	}
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("grpc://b: x: %w", err), false},
		{fmt.Errorf("grpc://b: x: %w", source.ErrNotFound), false},
		{fmt.Errorf("grpc://b: x: %w", source.ErrUnavailable), true},
	} {
		if got := blames(tc.err); got != tc.want {
			t.Errorf("blames(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
