package failover

import (
	"errors"
	"fmt"
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
