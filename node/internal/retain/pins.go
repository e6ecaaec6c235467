package retain

import (
	"context"
	"sync"
)

// Pins counts the readers of each blob, so that a retention pass never
// deletes a blob under a reader, and makes readers of a blob being deleted
// wait for the deletion to end (they then find it missing and fetch it
// again).
type Pins struct {
	kick func() // asks for a retention pass when a skipped blob is free

	mu       sync.Mutex               // protects the fields below
	reading  map[string]int           // readers streaming each blob now
	evicting map[string]chan struct{} // blobs being deleted; closed when done
	waiting  map[string]bool          // blobs a pass skipped while they were read
}

// NewPins returns an empty Pins; kick, which must not block, is called when
// the last reader of a blob a pass had to skip is done.
func NewPins(kick func()) *Pins {
	return &Pins{kick: kick, reading: map[string]int{}, evicting: map[string]chan struct{}{}, waiting: map[string]bool{}}
}

// StartReading counts a reader of digest until release is called, so that
// retention does not delete the blob under it. It waits for a deletion of
// the blob already under way.
func (p *Pins) StartReading(ctx context.Context, digest string) (release func(), err error) {
	for {
		p.mu.Lock()
		ch, busy := p.evicting[digest]
		if !busy {
			p.reading[digest]++
			p.mu.Unlock()
			return func() { p.doneReading(digest) }, nil
		}
		p.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (p *Pins) doneReading(digest string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.reading[digest]--; p.reading[digest] > 0 {
		return
	}
	delete(p.reading, digest)
	if p.waiting[digest] {
		delete(p.waiting, digest)
		p.kick()
	}
}

// Waiting reports whether a pass skipped digest because it was being read
// and waits for its last reader.
func (p *Pins) Waiting(digest string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.waiting[digest]
}

// claim marks for deletion the digests that are not being read, deleted,
// nor kept by keep (called with p.mu held: it must not call back into
// Pins), and returns them with the channel that release closes. Blobs being
// read are remembered, so that their last reader asks for another pass.
func (p *Pins) claim(digests []string, keep func(digest string) bool) (claimed []string, release func()) {
	done := make(chan struct{})
	p.mu.Lock()
	for _, d := range digests {
		switch {
		case p.reading[d] > 0:
			p.waiting[d] = true
		case p.evicting[d] != nil, keep(d):
		default:
			p.evicting[d] = done
			claimed = append(claimed, d)
		}
	}
	p.mu.Unlock()
	return claimed, func() {
		p.mu.Lock()
		for _, d := range claimed {
			delete(p.evicting, d)
		}
		p.mu.Unlock()
		close(done)
	}
}
