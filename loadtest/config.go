package loadtest

import (
	"fmt"
	"strings"
	"time"
	"unicode"

	"github.com/dpcache/dpcache/manifest"
)

// Config says what a load run simulates. Start from DefaultConfig.
type Config struct {
	// Product is the product the endpoints update. Required.
	Product string
	// From is the version the simulated endpoints have installed: they
	// read only the blobs whose digest is not in its manifest. Empty: a
	// fresh install, every blob of the newest version.
	From string
	// Endpoints is how many endpoints to simulate. Default 100.
	Endpoints int
	// Concurrency bounds the endpoints in flight at once; above Endpoints
	// it is Endpoints. Default 10.
	Concurrency int
	// Trust, when set, verifies the signatures of latest.json and the
	// manifests, once per distinct document. Nil: signatures are not
	// checked (a manifest must still be the one latest.json names by
	// digest).
	Trust *manifest.Trust
	// Verify checks each blob's SHA-256 as it is read. Default false: the
	// bytes are counted and dropped.
	Verify bool
	// IDPrefix names the endpoints in their reports: IDPrefix followed by
	// the endpoint's number, 1 to Endpoints, zero-padded to the width of
	// Endpoints ("loadtest-0042"). A second run with the same prefix
	// replaces the first one's reports instead of adding to them. Default
	// "loadtest-".
	IDPrefix string
	// ID, when set, replaces IDPrefix: every endpoint reports under it (a
	// client certificate's name, the only id a DP with --client-ca takes
	// from that certificate).
	ID string
	// Hostname is reported beside each id. Default: none.
	Hostname string
	// NodePID, when positive, is the DP's process on this machine: its
	// RssAnon and VmRSS are sampled every SampleEvery during the run.
	NodePID int
	// SampleEvery is the interval of the memory samples. Default 200 ms.
	SampleEvery time.Duration
}

// DefaultConfig returns the defaults documented on Config; Product is to
// be set.
func DefaultConfig() Config {
	return Config{
		Endpoints:   100,
		Concurrency: 10,
		IDPrefix:    "loadtest-",
		SampleEvery: 200 * time.Millisecond,
	}
}

// maxID is the longest endpoint id a DP accepts.
const maxID = 256

// Validate checks every field; errors wrap ErrInvalidConfig and name the
// field.
func (c Config) Validate() error {
	if err := manifest.ValidName(c.Product); err != nil {
		return fmt.Errorf("product %q: %v: %w", c.Product, err, ErrInvalidConfig)
	}
	if c.From != "" {
		if err := manifest.ValidName(c.From); err != nil {
			return fmt.Errorf("from version %q: %v: %w", c.From, err, ErrInvalidConfig)
		}
	}
	if c.Endpoints < 1 {
		return fmt.Errorf("endpoints %d: want at least 1: %w", c.Endpoints, ErrInvalidConfig)
	}
	if c.Concurrency < 1 {
		return fmt.Errorf("concurrency %d: want at least 1: %w", c.Concurrency, ErrInvalidConfig)
	}
	if c.SampleEvery <= 0 {
		return fmt.Errorf("sample interval %v: want a positive duration: %w", c.SampleEvery, ErrInvalidConfig)
	}
	if c.ID != "" {
		return checkID("id", c.ID, len(c.ID))
	}
	return checkID("id prefix", c.IDPrefix, len(c.IDPrefix)+len(fmt.Sprint(c.Endpoints)))
}

// checkID refuses what a DP would refuse as an endpoint id (see
// node.ReportStatus): empty, too long, a '/' or an unprintable character.
func checkID(what, id string, n int) error {
	switch {
	case n == 0:
		return fmt.Errorf("%s: empty: %w", what, ErrInvalidConfig)
	case n > maxID:
		return fmt.Errorf("%s %q: ids would be %d bytes, a DP takes at most %d: %w", what, id, n, maxID, ErrInvalidConfig)
	case strings.ContainsFunc(id, func(r rune) bool { return r == '/' || !unicode.IsPrint(r) }):
		return fmt.Errorf("%s %q: a '/' or an unprintable character, which a DP refuses: %w", what, id, ErrInvalidConfig)
	}
	return nil
}

// endpointID is the id endpoint i (0-based) reports under.
func (c Config) endpointID(i int) string {
	if c.ID != "" {
		return c.ID
	}
	return fmt.Sprintf("%s%0*d", c.IDPrefix, len(fmt.Sprint(c.Endpoints)), i+1)
}
