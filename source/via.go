package source

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
)

// A DP whose upstream is another DP (grpc://, grpcs://) sends with every
// document or blob request the chain of DP instances the request came
// through, itself last, in the gRPC metadata ViaKey: "id1,id2,...". A DP
// that finds its own instance id in a chain it receives refuses the
// request at once (ErrLoop): two DPs that list each other as upstreams,
// or a longer cycle, would otherwise wait on each other until a timeout.
// Instance ids are random per process, because DP names repeat across
// sites ("dp-1" in every branch office).

// ViaKey is the gRPC metadata key of the chain of DP instances a request
// came through.
const ViaKey = "dpcache-via"

// MaxHops is the most DP instances a chain may hold: a request that has
// gone through more is refused as a likely cycle.
const MaxHops = 8

// instanceIDLen is the length of an instance id: 16 lowercase hex digits.
const instanceIDLen = 16

// NewInstanceID returns a random DP instance id (16 lowercase hex digits).
func NewInstanceID() string {
	var b [instanceIDLen / 2]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return hex.EncodeToString(b[:])
}

type viaKey struct{}

// WithVia returns a copy of ctx whose requests to DPs (GRPC sources) carry
// chain, the DP instances the work came through, the sending DP last.
func WithVia(ctx context.Context, chain []string) context.Context {
	return context.WithValue(ctx, viaKey{}, slices.Clip(chain))
}

// Via returns the chain WithVia put in ctx, or nil. The caller must not
// modify it.
func Via(ctx context.Context) []string {
	v, _ := ctx.Value(viaKey{}).([]string)
	return v
}

// CarryVia returns bg with ctx's chain (Via) when ctx has one, else bg
// itself: work that outlives the request that started it (a fetch shared
// by concurrent callers) still tells the DPs it asks where it came from.
func CarryVia(bg, ctx context.Context) context.Context {
	if via := Via(ctx); via != nil {
		return WithVia(bg, via)
	}
	return bg
}

// FormatVia renders a chain as the value of ViaKey.
func FormatVia(chain []string) string { return strings.Join(chain, ",") }

// ParseVia parses the values of ViaKey a DP received (at most one), as
// hostile input. A malformed chain (several values, an id that is not 16
// lowercase hex digits) wraps ErrInvalid; a chain of more than MaxHops
// ids wraps ErrLoop. No value is an empty chain.
func ParseVia(values []string) ([]string, error) {
	switch len(values) {
	case 0:
		return nil, nil
	case 1:
	default:
		return nil, fmt.Errorf("%s metadata: %d values, want one: %w", ViaKey, len(values), ErrInvalid)
	}
	if values[0] == "" {
		return nil, nil
	}
	// Split no further than needed: the value is the sender's.
	ids := strings.SplitN(values[0], ",", MaxHops+2)
	if len(ids) > MaxHops {
		return nil, loopError(fmt.Sprintf("upstream hop limit: this request already went through more than %d DPs; check the --upstream lists for a cycle", MaxHops))
	}
	for _, id := range ids {
		if !validInstanceID(id) {
			return nil, fmt.Errorf("%s metadata: %q is not a DP instance id (16 lowercase hex digits): %w", ViaKey, truncate(id, 40), ErrInvalid)
		}
	}
	return ids, nil
}

// CheckLoop returns an error wrapping ErrLoop when chain, as received by
// the DP instance self, holds self: the request came back to it.
func CheckLoop(chain []string, self string) error {
	i := slices.Index(chain, self)
	if i < 0 {
		return nil
	}
	return loopError(fmt.Sprintf("upstream loop: this request came back to this DP after %d hops; check the --upstream lists", len(chain)-i))
}

// loopError is an ErrLoop whose message says it all (it names the loop
// itself, so ErrLoop's text is not repeated).
type loopError string

func (e loopError) Error() string { return string(e) }
func (e loopError) Unwrap() error { return ErrLoop }

func validInstanceID(id string) bool {
	if len(id) != instanceIDLen {
		return false
	}
	for i := range len(id) {
		if c := id[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
