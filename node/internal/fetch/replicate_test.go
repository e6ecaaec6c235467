package fetch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dpcache/dpcache/cache"
	"github.com/dpcache/dpcache/node/internal/nodeerr"
)

// The owner's lead on its followers is what the site fetches twice if the
// owner dies: 2% of the blob, within [1 MiB, 4 MiB].
func TestPeerLead(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		size, want int64
	}{
		{1 << 10, 1 << 20},
		{32 << 20, 1 << 20},
		{64 << 20, (64 << 20) / 50},
		{160 << 20, (160 << 20) / 50},
		{256 << 20, 4 << 20},
		{4 << 30, 4 << 20},
	} {
		if got := peerLead(tc.size); got != tc.want {
			t.Errorf("peerLead(%d) = %d, want %d", tc.size, got, tc.want)
		}
	}
}

// A fetch further ahead of a progressing follower than peerLead waits for
// it to move.
func TestFetch_AwaitPeers_BoundsTheLead(t *testing.T) {
	t.Parallel()
	f := &fetch{size: 64 << 20}
	id := f.addPeer(0)
	var moved atomic.Bool
	go func() {
		time.Sleep(50 * time.Millisecond)
		moved.Store(true)
		f.movePeer(id, 8<<20)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	f.awaitPeers(ctx, 8<<20) // within the lead of pos 8 MiB only once the follower moves
	if !moved.Load() {
		t.Fatal("the fetch went on 8 MiB ahead of a follower at 0")
	}
	f.awaitPeers(ctx, 8<<20+peerLead(f.size)) // at the bound: no wait
	f.removePeer(id)
}

// Replicate copies a blob that no manifest this DP knows names, at the
// size its owner announced, counted as peer bytes; EnsureBlob of such a
// blob stays NotFound, and a replica without a size is refused.
func TestFetcher_Replicate(t *testing.T) {
	data := bytes.Repeat([]byte("replica "), 128<<10) // 1 MiB
	sum := sha256.Sum256(data)
	digest := hex.EncodeToString(sum[:])
	cc := cache.DefaultConfig()
	cc.Path = filepath.Join(t.TempDir(), "cache.db")
	store, err := cache.Open(cc)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	owner := &slowSource{data: data}
	fr := New(ctx, Config{ServeChunk: 64 << 10, ServeMemory: 1 << 20, Logger: slog.New(slog.DiscardHandler)},
		store, fixedSizes{}, ownerRoute{owner}, noPins{}, noMetrics{}, nil)
	defer fr.Stop()

	if err := fr.EnsureBlob(ctx, digest); !errors.Is(err, nodeerr.ErrNotFound) {
		t.Fatalf("EnsureBlob of a blob no manifest names: %v, want ErrNotFound", err)
	}
	if err := fr.Replicate(ctx, digest, 0); !errors.Is(err, nodeerr.ErrInvalid) {
		t.Fatalf("Replicate without a size: %v, want ErrInvalid", err)
	}
	if err := fr.Replicate(ctx, digest, int64(len(data))); err != nil {
		t.Fatalf("Replicate: %v", err)
	}
	if size, err := store.Stat(digest); err != nil || size != int64(len(data)) {
		t.Fatalf("after Replicate the cache has %d bytes, %v; want the blob whole", size, err)
	}
	if tr := fr.Traffic(); tr.Peer != int64(len(data)) || tr.Upstream != 0 {
		t.Fatalf("traffic %+v, want %d peer bytes and none upstream", tr, len(data))
	}
}

// ownerRoute routes every blob to one owner DP.
type ownerRoute struct{ src *slowSource }

func (r ownerRoute) Candidates(string, bool) []Candidate {
	return []Candidate{{Src: r.src, Kind: FromOwner}}
}
