package source_test

import (
	"errors"
	"io"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc"

	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
	"github.com/dpcache/dpcache/source"
)

func TestVia_Parse(t *testing.T) {
	t.Parallel()
	a, b := "0123456789abcdef", "fedcba9876543210"
	nine := strings.TrimSuffix(strings.Repeat(a+",", source.MaxHops+1), ",")
	huge := strings.Repeat(a+",", 10000) + "x"
	tests := []struct {
		name   string
		values []string
		want   []string
		err    error
	}{
		{"none", nil, nil, nil},
		{"empty", []string{""}, nil, nil},
		{"one", []string{a}, []string{a}, nil},
		{"two", []string{a + "," + b}, []string{a, b}, nil},
		{"at the limit", []string{strings.TrimSuffix(strings.Repeat(a+",", source.MaxHops), ",")}, slices.Repeat([]string{a}, source.MaxHops), nil},
		{"past the limit", []string{nine}, nil, source.ErrLoop},
		{"huge", []string{huge}, nil, source.ErrLoop},
		{"two values", []string{a, b}, nil, source.ErrInvalid},
		{"uppercase", []string{strings.ToUpper(a)}, nil, source.ErrInvalid},
		{"short", []string{"abc"}, nil, source.ErrInvalid},
		{"empty id", []string{a + ",," + b}, nil, source.ErrInvalid},
		{"trailing comma", []string{a + ","}, nil, source.ErrInvalid},
		{"a name", []string{"dp-1"}, nil, source.ErrInvalid},
		{"spaces", []string{a + ", " + b}, nil, source.ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := source.ParseVia(tt.values)
			if !errors.Is(err, tt.err) || (err == nil) != (tt.err == nil) {
				t.Fatalf("ParseVia: error %v, want %v", err, tt.err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("ParseVia = %q, want %q", got, tt.want)
			}
			if err != nil && len(err.Error()) > 200 {
				t.Errorf("error of %d bytes, want one short line: %.200s", len(err.Error()), err)
			}
		})
	}
}

func TestVia_CheckLoop(t *testing.T) {
	t.Parallel()
	self, a, b := source.NewInstanceID(), source.NewInstanceID(), source.NewInstanceID()
	if self == a {
		t.Fatalf("two instance ids are equal: %s", a)
	}
	if _, err := source.ParseVia([]string{self}); err != nil {
		t.Fatalf("a new instance id does not parse: %v", err)
	}
	if err := source.CheckLoop([]string{a, b}, self); err != nil {
		t.Errorf("a chain without this DP: %v", err)
	}
	if err := source.CheckLoop(nil, self); err != nil {
		t.Errorf("no chain: %v", err)
	}
	err := source.CheckLoop([]string{a, self, b}, self)
	if !errors.Is(err, source.ErrLoop) || !errors.Is(err, source.ErrUnavailable) {
		t.Fatalf("a chain through this DP: %v, want ErrLoop (and ErrUnavailable)", err)
	}
	// self sent it to b, b to this DP: two hops.
	if want := "upstream loop: this request came back to this DP after 2 hops; check the --upstream lists"; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
}

// TestGRPC_Via: requests carry the chain of DPs in ctx (source.WithVia),
// except partial reads, which cannot loop; without a chain, nothing.
func TestGRPC_Via(t *testing.T) {
	t.Parallel()
	content, digest := blobContent(10)
	f := &fakeDP{
		latest: func(req *pb.GetLatestRequest) (*pb.GetLatestResponse, error) {
			return &pb.GetLatestResponse{Latest: &pb.SignedDocument{Data: []byte("l"), Signature: []byte("s")}}, nil
		},
		readBlob: func(req *pb.ReadBlobRequest, stream grpc.ServerStreamingServer[pb.ReadBlobResponse]) error {
			return stream.Send(&pb.ReadBlobResponse{Data: content[req.GetOffset():], Size: uint64(len(content))})
		},
	}
	g := parse(t, "grpc://"+startFake(t, f), source.DefaultOptions()).(*source.GRPC)
	chain := []string{source.NewInstanceID(), source.NewInstanceID()}
	ctx := source.WithVia(testCtx(t), chain)
	calls := []func() error{
		func() error { _, err := g.Latest(ctx, "kes"); return err },
		func() error { _, err := g.Manifest(ctx, "kes", "1"); return err },
		func() error { _, err := readBlob(ctx, g, digest, 0, io.ReadAll); return err },
		func() error { _, err := readBlob(ctx, g.Forwarded(), digest, 0, io.ReadAll); return err },
		func() error { _, err := readBlob(ctx, g.AvailableOnly(), digest, 0, io.ReadAll); return err },
		func() error { _, err := g.Latest(testCtx(t), "kes"); return err },
	}
	for i, call := range calls {
		if err := call(); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	want := [][]string{{source.FormatVia(chain)}, {source.FormatVia(chain)}, {source.FormatVia(chain)}, {source.FormatVia(chain)}, nil, nil}
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, md := range f.headers {
		if got := md.Get(source.ViaKey); !slices.Equal(got, want[i]) {
			t.Errorf("request %d carried %s %q, want %q", i, source.ViaKey, got, want[i])
		}
	}
}
