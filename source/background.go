package source

import (
	"context"
	"sync/atomic"
)

// A DP's download task (the products it keeps current before any endpoint
// asks) fetches under the DP's upstream rate limit; what an endpoint or
// `dpcache prefetch` waits for does not. The task marks its work with
// WithBackground; requests that work sends to DPs (GRPC sources) carry
// BackgroundKey, so that the DP that fetches upstream for it (the blob's
// owner in the site) limits that fetch too.

// BackgroundKey is the gRPC metadata key, with the value "1", of a request
// made by a DP's download task.
const BackgroundKey = "dpcache-background"

type backgroundKey struct{}

// WithBackground returns a copy of ctx marked as the download task's work.
// The work is rate-limited while limited reports true: a completion that
// `dpcache prefetch` or an endpoint comes to wait for stops being limited
// when its owner clears the flag.
func WithBackground(ctx context.Context, limited *atomic.Bool) context.Context {
	return context.WithValue(ctx, backgroundKey{}, limited)
}

// Background returns the flag WithBackground put in ctx, or nil when ctx
// is not the download task's.
func Background(ctx context.Context) *atomic.Bool {
	b, _ := ctx.Value(backgroundKey{}).(*atomic.Bool)
	return b
}

// IsBackground reports whether ctx is the download task's and still
// rate-limited.
func IsBackground(ctx context.Context) bool {
	b := Background(ctx)
	return b != nil && b.Load()
}

// ParseBackground reads the value of BackgroundKey a DP received, as
// hostile input: exactly one value "1" marks the request as a download
// task's; anything else does not.
func ParseBackground(values []string) bool {
	return len(values) == 1 && values[0] == "1"
}
