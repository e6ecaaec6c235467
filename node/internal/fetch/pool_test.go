package fetch

import (
	"context"
	"testing"
	"time"
)

// A reader that stops reading leaves its buffers unwritten: after the stall
// timeout, a stream waiting for budget takes their budget back, so the
// other streams go on; the stalled buffers, written at last, do not give
// their budget back twice; and no more than the budget is ever lent out
// this way.
func TestChunkPool_StalledStreamsGiveBackBudget(t *testing.T) {
	const size = 64 << 10
	p := newChunkPool(size, 2*size, 50*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	frozen := p.stream()
	var held []*[]byte
	for range 2 { // the whole budget, never written
		b, err := frozen.get(ctx, size)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, b)
	}
	other := p.stream()
	b, err := other.get(ctx, size) // waits out the stall, then reclaims
	if err != nil {
		t.Fatalf("a stream waiting behind a stalled one: %v", err)
	}
	other.Put(b)
	b2, err := other.get(ctx, size)
	if err != nil {
		t.Fatal(err)
	}

	// The budget is lent out once: while the frozen stream's buffers are
	// unwritten, streams that stall in turn keep their budget.
	second := p.stream()
	b3, err := second.get(ctx, size)
	if err != nil {
		t.Fatal(err)
	}
	if n := p.reclaimStalled(time.Now().Add(time.Hour)); n != 0 {
		t.Fatalf("reclaimed %d more streams past the limit", n)
	}

	// The frozen stream's buffers are written at last: nothing is given
	// back twice, and when every stream is done the budget is whole.
	for _, b := range held {
		frozen.Put(b)
	}
	frozen.done()
	other.Put(b2)
	other.done()
	second.Put(b3)
	second.done()
	if !p.budget.TryAcquire(2 * size) {
		t.Fatal("the budget is not whole after every stream is done")
	}
	p.budget.Release(2 * size)
	if p.overdraft != 0 {
		t.Fatalf("overdraft %d after every stream is done, want 0", p.overdraft)
	}
}
