package loadtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/source"
)

func ms(v ...int) []time.Duration {
	out := make([]time.Duration, len(v))
	for i, x := range v {
		out[i] = time.Duration(x) * time.Millisecond
	}
	return out
}

func TestPercentile(t *testing.T) {
	t.Parallel()
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(i+1) * time.Millisecond
	}
	tests := []struct {
		name   string
		sorted []time.Duration
		p      float64
		want   time.Duration
	}{
		{"none", nil, 50, 0},
		{"one p50", ms(7), 50, 7 * time.Millisecond},
		{"one p99", ms(7), 99, 7 * time.Millisecond},
		{"two p50 is the lower", ms(1, 2), 50, time.Millisecond},
		{"two p99 is the upper", ms(1, 2), 99, 2 * time.Millisecond},
		{"hundred p50", hundred, 50, 50 * time.Millisecond},
		{"hundred p99", hundred, 99, 99 * time.Millisecond},
		{"hundred p100", hundred, 100, 100 * time.Millisecond},
		{"hundred p1", hundred, 1, time.Millisecond},
		{"ten p99 is the max", ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 99, 10 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := percentile(tt.sorted, tt.p); got != tt.want {
				t.Errorf("percentile(%v, %v) = %v, want %v", tt.sorted, tt.p, got, tt.want)
			}
		})
	}
}

func TestSummary_Summarize(t *testing.T) {
	t.Parallel()
	// Endpoint 2 failed before its first answer, endpoint 4 after it.
	update := ms(30, 10, -1, 20, -1)
	first := ms(3, 1, -1, 2, 5)
	update[2], update[4], first[2] = -1, -1, -1
	s := &Summary{Updated: 3, Elapsed: 30 * time.Second}
	kinds := map[string]*ErrorKind{
		"ReadBlob: unavailable": {Kind: "ReadBlob: unavailable", Count: 1, Example: "x"},
		"dial: other":           {Kind: "dial: other", Count: 1, Example: "y"},
		"GetLatest: refused":    {Kind: "GetLatest: refused", Count: 2, Example: "z"},
	}
	s.summarize(update, first, kinds)
	if s.P50 != 20*time.Millisecond || s.P99 != 30*time.Millisecond || s.Max != 30*time.Millisecond {
		t.Errorf("p50 %v p99 %v max %v, want 20ms 30ms 30ms (failed endpoints left out)", s.P50, s.P99, s.Max)
	}
	if s.FirstP50 != 2*time.Millisecond || s.FirstP99 != 5*time.Millisecond {
		t.Errorf("first p50 %v p99 %v, want 2ms 5ms (an endpoint that failed later still counts)", s.FirstP50, s.FirstP99)
	}
	var order []string
	for _, k := range s.ErrorKinds {
		order = append(order, k.Kind)
	}
	if want := "[GetLatest: refused ReadBlob: unavailable dial: other]"; fmt.Sprint(order) != want {
		t.Errorf("error kinds %v, want %s (most frequent first, then by name)", order, want)
	}
	if got := s.PerMinute(); got != 6 {
		t.Errorf("PerMinute = %v, want 6 (3 in 30 s)", got)
	}
	if got := (&Summary{}).PerMinute(); got != 0 {
		t.Errorf("PerMinute of no time = %v, want 0", got)
	}
}

func TestKindOf(t *testing.T) {
	t.Parallel()
	tests := []struct {
		err  error
		want string
	}{
		{&stepError{"GetLatest", fmt.Errorf("grpc://x: %w: connection refused", source.ErrUnavailable)}, "GetLatest: unavailable"},
		{&stepError{"ReportStatus", fmt.Errorf("x: %w (PermissionDenied)", source.ErrRefused)}, "ReportStatus: refused"},
		{&stepError{"ReadBlob", fmt.Errorf("x: %w", io.ErrUnexpectedEOF)}, "ReadBlob: short"},
		{&stepError{"ReadBlob", fmt.Errorf("x: %w", ErrDigest)}, "ReadBlob: digest"},
		{&stepError{"GetManifest", fmt.Errorf("x: %w", manifest.ErrMismatch)}, "GetManifest: mismatch"},
		{&stepError{"GetLatest", fmt.Errorf("x: %w", manifest.ErrBadSignature)}, "GetLatest: signature"},
		{&stepError{"ReadBlob", context.Canceled}, "ReadBlob: canceled"},
		{&stepError{"dial", errors.New("boom")}, "dial: other"},
		{errors.New("boom"), "other: other"},
	}
	for _, tt := range tests {
		if got := kindOf(tt.err); got != tt.want {
			t.Errorf("kindOf(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
}

func TestConfig_Validate(t *testing.T) {
	t.Parallel()
	ok := DefaultConfig()
	ok.Product = "av"
	if err := ok.Validate(); err != nil {
		t.Fatalf("defaults with a product: %v", err)
	}
	if got := ok.endpointID(41); got != "loadtest-042" {
		t.Errorf("id of endpoint 41 of 100 = %q, want loadtest-042", got)
	}
	for name, mod := range map[string]func(*Config){
		"no product":         func(c *Config) { c.Product = "" },
		"bad from":           func(c *Config) { c.From = "../x" },
		"no endpoints":       func(c *Config) { c.Endpoints = 0 },
		"no concurrency":     func(c *Config) { c.Concurrency = 0 },
		"slash in prefix":    func(c *Config) { c.IDPrefix = "a/b" },
		"unprintable id":     func(c *Config) { c.ID = "a\x00" },
		"no sample interval": func(c *Config) { c.SampleEvery = 0 },
	} {
		c := ok
		mod(&c)
		if err := c.Validate(); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: Validate = %v, want ErrInvalidConfig", name, err)
		}
	}
}
