package node

import (
	"context"
	"io"
	"log/slog"
	"math"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
)

// FuzzParseRange: any Range header against any blob size either is refused
// or names bytes inside the blob (0 <= from < to <= size); never a panic
// or an overflow (a range ending at 2^63-1 once panicked a handler).
func FuzzParseRange(f *testing.F) {
	for _, h := range []string{"bytes=0-", "bytes=10-19", "bytes=0-9223372036854775807", "bytes=-5", "bytes=5-4",
		"bytes=0-1,2-3", "bytes=18446744073709551615-", "items=0-1", "bytes= 1-2", "bytes=1-2 "} {
		f.Add(h, int64(100))
	}
	f.Add("bytes=0-", int64(math.MaxInt64))
	f.Fuzz(func(t *testing.T, h string, size int64) {
		if size <= 0 {
			return
		}
		from, to, ok := parseRange(h, size)
		if ok && (from < 0 || from >= to || to > size) {
			t.Fatalf("parseRange(%q, %d) = %d, %d: outside the blob", h, size, from, to)
		}
	})
}

// FuzzReadBlobRequest: any ReadBlob request from the network (digest,
// offset, version hint, marks) is answered with a status, never a crash;
// the DP serves a normal request afterwards. The blob is cached whole, so
// offsets are checked against a real size.
func FuzzReadBlobRequest(f *testing.F) {
	v := newVendor(f)
	pub := v.publish(f, "av", "1", 1, map[string]int{"databases/b.dat": 100 << 10})
	n := startNode(f, v, v.repo, func(c *Config) { c.Logger = slog.New(slog.DiscardHandler) })
	c := dial(f, n)
	digest := pub.Manifest.Files[0].SHA256
	if _, err := c.GetManifest(testCtx(f), &pb.GetManifestRequest{Product: "av", Version: "1"}); err != nil {
		f.Fatal(err)
	}
	if _, err := readBlob(testCtx(f), c, digest, 0); err != nil { // cached from now on
		f.Fatal(err)
	}
	f.Add(digest, uint64(0), "av", "1", false, false)
	f.Add(digest, uint64(1)<<63, "", "", false, false)
	f.Add(digest, uint64(math.MaxUint64), "av", "..", true, true)
	f.Add(strings.Repeat("A", 64), uint64(5), "", "", false, true)
	f.Add("", uint64(0), "x", "y", true, false)
	f.Fuzz(func(t *testing.T, sha string, off uint64, product, version string, forwarded, available bool) {
		if !utf8.ValidString(sha) || !utf8.ValidString(product) || !utf8.ValidString(version) {
			return // a gRPC client cannot send it (proto strings are UTF-8)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		stream, err := c.ReadBlob(ctx, &pb.ReadBlobRequest{Sha256: sha, Offset: off, Product: product, Version: version, Forwarded: forwarded, AvailableOnly: available})
		for err == nil {
			_, err = stream.Recv()
		}
		switch status.Code(err) {
		case codes.OK, codes.InvalidArgument, codes.NotFound, codes.Unavailable, codes.DataLoss, codes.Canceled:
		default:
			if err != io.EOF {
				t.Fatalf("ReadBlob(%q, %d, %q, %q): %v", sha, off, product, version, err)
			}
		}
		if b, err := readBlob(ctx, c, digest, 0); err != nil || len(b) != 100<<10 {
			t.Fatalf("the DP stopped serving after ReadBlob(%q, %d): %d bytes, %v", sha, off, len(b), err)
		}
	})
}
