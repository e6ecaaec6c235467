package loadtest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dpcache/dpcache/source"
)

// Conn is one simulated endpoint's connection to the DP: a grpc:// or
// grpcs:// source (*source.GRPC). Run closes each Conn it dials.
type Conn interface {
	source.Source
	source.Reporter
}

// Dialer opens a new connection to the DP, its own (not shared with other
// endpoints), each time it is called. It is called from many goroutines
// at once.
type Dialer func() (Conn, error)

// resultUpdated is the result a simulated endpoint reports, an agent's
// (agent.StatusUpdated).
const resultUpdated = "updated"

// Run simulates cfg.Endpoints endpoints updating cfg.Product through the
// DP that dial connects to, at most cfg.Concurrency at once, and returns
// what it measured. It first learns, over a connection of its own, the
// newest version and the blobs an endpoint lacks (errors wrap ErrSetup);
// endpoints that fail are counted in the Summary, not returned as an
// error. When ctx ends, Run starts no more endpoints, lets those in
// flight fail, and returns the Summary so far with ctx's error. On return
// every connection it opened is closed and every goroutine it started has
// stopped.
func Run(ctx context.Context, cfg Config, dial Dialer) (*Summary, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	r := &runner{cfg: cfg, dial: dial, docs: newDocs(cfg.Trust)}
	sum, err := r.setup(ctx)
	if err != nil {
		return nil, err
	}

	sctx, stopSampling := context.WithCancel(context.Background())
	var sampling sync.WaitGroup
	var node *sampler
	if cfg.NodePID > 0 {
		node = newSampler(cfg.NodePID, cfg.SampleEvery)
	}
	self := newSampler(os.Getpid(), cfg.SampleEvery)
	for _, s := range []*sampler{node, self} {
		if s != nil {
			sampling.Go(func() { s.run(sctx) })
		}
	}

	update := make([]time.Duration, cfg.Endpoints)
	first := make([]time.Duration, cfg.Endpoints)
	var next atomic.Int64
	var workers sync.WaitGroup
	start := time.Now()
	for range min(cfg.Concurrency, cfg.Endpoints) {
		workers.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= cfg.Endpoints {
					return
				}
				update[i], first[i] = r.endpoint(ctx, i)
			}
		})
	}
	workers.Wait()
	sum.Elapsed = time.Since(start)
	stopSampling()
	sampling.Wait()

	sum.Endpoints = min(int(next.Load()), cfg.Endpoints)
	sum.Errors = int(r.failed.Load())
	sum.Updated = sum.Endpoints - sum.Errors
	sum.Bytes = r.bytes.Load()
	r.mu.Lock()
	sum.summarize(update[:sum.Endpoints], first[:sum.Endpoints], r.kinds)
	r.mu.Unlock()
	if node != nil {
		m := node.memory()
		if m.Samples > 0 {
			sum.Node = &m
		}
	}
	sum.Self = self.memory()
	return sum, ctx.Err()
}

// runner is the state of one Run shared by its endpoints.
type runner struct {
	cfg    Config
	dial   Dialer
	docs   *docs
	bytes  atomic.Int64
	failed atomic.Int64
	mu     sync.Mutex            // protects kinds
	kinds  map[string]*ErrorKind // by ErrorKind.Kind
}

// setup reads, over one connection, the manifest of cfg.From and the
// newest version's documents: what every endpoint will be asked to do.
func (r *runner) setup(ctx context.Context) (*Summary, error) {
	sum := &Summary{Product: r.cfg.Product, From: r.cfg.From, Signatures: r.cfg.Trust != nil, Verified: r.cfg.Verify}
	conn, err := r.dial()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSetup, err)
	}
	defer conn.Close()
	if r.cfg.From != "" {
		signed, err := conn.Manifest(ctx, r.cfg.Product, r.cfg.From)
		if err != nil {
			return nil, fmt.Errorf("%w: the manifest of %s %s, the version endpoints start from: %w", ErrSetup, r.cfg.Product, r.cfg.From, err)
		}
		if err := r.docs.setBase(signed); err != nil {
			return nil, fmt.Errorf("%w: the manifest of %s %s: %w", ErrSetup, r.cfg.Product, r.cfg.From, err)
		}
	}
	signed, err := conn.Latest(ctx, r.cfg.Product)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSetup, err)
	}
	l, err := r.docs.latest(signed)
	if err != nil {
		return nil, fmt.Errorf("%w: %s latest.json from %s: %w", ErrSetup, r.cfg.Product, conn, err)
	}
	signed, err = conn.Manifest(ctx, r.cfg.Product, l.Version)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSetup, err)
	}
	m, err := r.docs.manifest(signed, l)
	if err != nil {
		return nil, fmt.Errorf("%w: the manifest of %s %s from %s: %w", ErrSetup, r.cfg.Product, l.Version, conn, err)
	}
	sum.Version, sum.Serial = l.Version, l.Serial
	sum.BlobsPerEndpoint, sum.BytesPerEndpoint = len(m.fetch), m.fetchBytes
	return sum, nil
}

// endpoint runs endpoint i's update and returns the time to its report
// and to its first answer, each -1 when it did not get that far.
func (r *runner) endpoint(ctx context.Context, i int) (update, first time.Duration) {
	start := time.Now()
	update, first = -1, -1
	fail := func(step string, err error) (time.Duration, time.Duration) {
		r.fail(&stepError{step: step, err: err})
		return -1, first
	}
	conn, err := r.dial()
	if err != nil {
		return fail("dial", err)
	}
	defer conn.Close()
	signed, err := conn.Latest(ctx, r.cfg.Product)
	if err != nil {
		return fail("GetLatest", err)
	}
	first = time.Since(start)
	l, err := r.docs.latest(signed)
	if err != nil {
		return fail("GetLatest", err)
	}
	signed, err = conn.Manifest(ctx, r.cfg.Product, l.Version)
	if err != nil {
		return fail("GetManifest", err)
	}
	m, err := r.docs.manifest(signed, l)
	if err != nil {
		return fail("GetManifest", err)
	}
	for _, f := range m.fetch {
		if err := r.readBlob(ctx, conn, f.SHA256, f.Size); err != nil {
			return fail("ReadBlob", err)
		}
	}
	err = conn.ReportStatus(ctx, source.Status{
		ID: r.cfg.endpointID(i), Hostname: r.cfg.Hostname, Product: r.cfg.Product,
		Version: l.Version, Serial: l.Serial, Result: resultUpdated, Reported: time.Now(),
	})
	if err != nil {
		return fail("ReportStatus", err)
	}
	return time.Since(start), first
}

// readBlob reads a blob whole from conn and drops its bytes, or hashes
// them with cfg.Verify. The transport's buffers go to the writer as they
// are (the source's WriteTo): no buffer of the endpoint's own.
func (r *runner) readBlob(ctx context.Context, conn Conn, digest string, size int64) error {
	rc, err := conn.Blob(ctx, digest, 0)
	if err != nil {
		return err
	}
	defer rc.Close()
	var w io.Writer = io.Discard
	var h hash.Hash
	if r.cfg.Verify {
		h = sha256.New()
		w = h
	}
	n, err := io.Copy(w, rc)
	r.bytes.Add(n)
	if err != nil {
		return err
	}
	if n != size {
		return fmt.Errorf("blob %s: %d bytes, the manifest says %d: %w", digest, n, size, ErrDigest)
	}
	if h != nil {
		if got := hex.EncodeToString(h.Sum(nil)); got != digest {
			return fmt.Errorf("blob %s: the bytes have sha256 %s: %w", digest, got, ErrDigest)
		}
	}
	return nil
}

// fail counts an endpoint's failure by its kind.
func (r *runner) fail(err error) {
	r.failed.Add(1)
	kind := kindOf(err)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.kinds == nil {
		r.kinds = map[string]*ErrorKind{}
	}
	k := r.kinds[kind]
	if k == nil {
		k = &ErrorKind{Kind: kind, Example: err.Error()}
		r.kinds[kind] = k
	}
	k.Count++
}
