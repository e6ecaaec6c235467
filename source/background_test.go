package source

import (
	"context"
	"sync/atomic"
	"testing"
)

func TestParseBackground(t *testing.T) {
	t.Parallel()
	tests := []struct {
		values []string
		want   bool
	}{
		{nil, false},
		{[]string{"1"}, true},
		{[]string{"0"}, false},
		{[]string{"true"}, false},
		{[]string{"1", "1"}, false}, // one value only
		{[]string{""}, false},
	}
	for _, tt := range tests {
		if got := ParseBackground(tt.values); got != tt.want {
			t.Errorf("ParseBackground(%q) = %v, want %v", tt.values, got, tt.want)
		}
	}
}

func TestIsBackground(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	if IsBackground(ctx) || Background(ctx) != nil {
		t.Fatal("a plain context is not the download task's")
	}
	var limited atomic.Bool
	limited.Store(true)
	bg := WithBackground(ctx, &limited)
	if !IsBackground(bg) || Background(bg) != &limited {
		t.Fatal("WithBackground's context is the download task's")
	}
	limited.Store(false) // a waiter joined
	if IsBackground(bg) || Background(bg) == nil {
		t.Fatal("once its flag is cleared, the work is no longer limited but still marked")
	}
}
