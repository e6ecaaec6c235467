package agent

import (
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/source"
)

// Config says what to update, from where, and where to install it.
// A Config is read, never modified, by Update; one Config may serve
// concurrent calls for different products or directories.
type Config struct {
	// Sources are tried in order. When one fails (unreachable, not found,
	// bad signature, stale serial, corrupt content, broken stream) the
	// next is used; a download interrupted at one source resumes at its
	// offset from the next. Required. Update does not close them.
	Sources []source.Source

	// Product is the product to update (manifest.ValidName). Required.
	Product string

	// Dir is the install root: the product's files appear in
	// Dir/<product>/current/, and the agent's state in
	// Dir/<product>/.dpcache/. Required; created if missing.
	Dir string

	// Trust holds the public keys that signed documents must verify
	// against. Required.
	Trust *manifest.Trust

	// Components selects which files to install: "databases", "modules",
	// or both. Default both; empty also means both.
	Components []string

	// EndpointID, Hostname and Site identify the endpoint in the status
	// report sent to a source that accepts reports (a DP). EndpointID
	// empty (the default) means the id generated once and kept in Dir
	// (see EndpointID), so that each install root is an endpoint of its
	// own; Hostname defaults to the host name, reported beside the id;
	// Site is empty, which lets the DP record its own site.
	EndpointID, Hostname, Site string

	// Progress, when set, is called as blob bytes arrive with the bytes
	// done and the total to download in this run: bytes received from
	// sources, never those already on disk. Calls never overlap, done
	// never decreases, total shrinks when a partial download from an
	// earlier run is resumed and grows when a corrupt download is
	// discarded and fetched again. It must not block.
	Progress func(done, total int64)

	// Logger receives the run's events (component "agent"). Default:
	// discard.
	Logger *slog.Logger

	// Concurrency is how many files are fetched or verified at once.
	// Default 4.
	Concurrency int

	// ReportTimeout bounds sending the status report after a run.
	// Default 10 s.
	ReportTimeout time.Duration

	// StallTimeout is how long a download may deliver no byte before it
	// moves to the next source, resuming at its offset. Default 30 s
	// (source.DefaultChainOptions); 0 also means the default.
	StallTimeout time.Duration

	// hooks lets tests stop a run at chosen points (a simulated crash)
	// and wrap the writer of downloaded files.
	hooks *hooks
}

// hooks are test-only interruption and fault-injection points.
type hooks struct {
	// stage is called at each step of installing a staged version
	// ("staged", "versioned", "previous"); a non-nil error ends Update
	// at once, as a crash would, without any cleanup.
	stage func(step string) error
	// partWriter wraps the file a blob is downloaded into.
	partWriter func(w writeSyncer) writeSyncer
	// noBatch fetches every chunk on its own, never in a batched read.
	noBatch bool
	// switcher replaces the system's (the Windows logic over a fake file
	// system, on Linux).
	switcher switcher
}

// DefaultConfig returns a Config with every default set; the caller fills
// in Sources, Product, Dir and Trust.
func DefaultConfig() Config {
	host, err := os.Hostname()
	if err != nil {
		host = ""
	}
	return Config{
		// Both components: a full install.
		Components: []string{manifest.ComponentDatabases, manifest.ComponentModules},
		// The id kept in Dir identifies the endpoint (EndpointID ""); the
		// host name is reported beside it.
		Hostname: host,
		// Four files at once keep a LAN or a WAN link busy without
		// thrashing a small endpoint's disk.
		Concurrency: 4,
		// A report is best effort: never hold an update for long.
		ReportTimeout: 10 * time.Second,
	}
}

// Validate checks that c names sources, a valid product, a directory and
// trusted keys, and that its components and limits make sense. Errors wrap
// ErrInvalidConfig.
func (c Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("config: %s: %w", fmt.Sprintf(format, args...), ErrInvalidConfig)
	}
	if len(c.Sources) == 0 {
		return bad("no update source; give at least one")
	}
	for i, s := range c.Sources {
		if s == nil {
			return bad("source #%d is nil", i+1)
		}
	}
	if err := manifest.ValidName(c.Product); err != nil {
		return bad("product: %v", err)
	}
	if c.Dir == "" {
		return bad("no install directory")
	}
	if c.Trust == nil {
		return bad("no trusted public keys")
	}
	seen := map[string]bool{}
	for _, comp := range c.Components {
		switch comp {
		case manifest.ComponentDatabases, manifest.ComponentModules:
		default:
			return bad("unknown component %q (want %q or %q)", comp, manifest.ComponentDatabases, manifest.ComponentModules)
		}
		if seen[comp] {
			return bad("component %q given twice", comp)
		}
		seen[comp] = true
	}
	if c.EndpointID != "" {
		if err := ValidEndpointID(c.EndpointID); err != nil {
			return bad("endpoint id: %v", err)
		}
	}
	if c.Concurrency < 1 {
		return bad("concurrency %d: want at least 1", c.Concurrency)
	}
	if c.StallTimeout < 0 {
		return bad("negative stall timeout %v", c.StallTimeout)
	}
	if c.ReportTimeout < 0 {
		return bad("negative report timeout %v", c.ReportTimeout)
	}
	return nil
}

// components returns the selected components, sorted, defaulting to both.
func (c Config) components() []string {
	if len(c.Components) == 0 {
		return []string{manifest.ComponentDatabases, manifest.ComponentModules}
	}
	out := make([]string, 0, 2)
	for _, comp := range []string{manifest.ComponentDatabases, manifest.ComponentModules} {
		for _, want := range c.Components {
			if want == comp {
				out = append(out, comp)
			}
		}
	}
	return out
}

func (c Config) logger() *slog.Logger {
	l := c.Logger
	if l == nil {
		l = slog.New(slog.DiscardHandler)
	}
	return l.With("component", "agent", "product", c.Product)
}
