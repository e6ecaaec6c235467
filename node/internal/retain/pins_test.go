package retain

import (
	"context"
	"slices"
	"testing"
	"time"
)

// A blob being read is not claimed, and its last reader asks for a pass; a
// reader of a blob being deleted waits for the deletion.
func TestPins_ClaimSparesReaders(t *testing.T) {
	t.Parallel()
	kicked := 0
	p := NewPins(func() { kicked++ })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	release, err := p.StartReading(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	claimed, done := p.claim([]string{"a", "b", "c"}, func(d string) bool { return d == "c" })
	if !slices.Equal(claimed, []string{"b"}) || !p.Waiting("a") {
		t.Fatalf("claimed %v, a waiting %v; want [b] and true", claimed, p.Waiting("a"))
	}
	release()
	if kicked != 1 || p.Waiting("a") {
		t.Fatalf("after the last reader: kicked %d, waiting %v; want 1, false", kicked, p.Waiting("a"))
	}
	got := make(chan error, 1)
	go func() {
		r, err := p.StartReading(ctx, "b")
		if err == nil {
			r()
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("a reader of a blob being deleted did not wait: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	done()
	if err := <-got; err != nil {
		t.Fatal(err)
	}
}
