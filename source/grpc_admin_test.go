package source_test

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/dpcache/dpcache/source"
)

// TestGRPC_Admin: the one admin client (the command line's and a DP's
// fan-outs') against a real DP: its status, its endpoints, a prefetch
// streamed to the end, and discovery that keeps the given sources.
func TestGRPC_Admin(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	origin := httptest.NewServer(http.FileServer(http.Dir(r.root)))
	t.Cleanup(origin.Close)
	dp := startDP(t, r.trust, origin.URL)
	g := parse(t, "grpc://"+dp.GRPCAddr(), source.DefaultOptions()).(*source.GRPC)
	ctx := testCtx(t)

	recv, err := g.Prefetch(ctx, r.product)
	if err != nil {
		t.Fatal(err)
	}
	var done bool
	for {
		m, err := recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("prefetch stream: %v", err)
		}
		done = done || m.GetDone()
	}
	if !done {
		t.Error("the prefetch stream ended without a final message")
	}
	if _, err := g.Prefetch(ctx, "../etc"); !errors.Is(err, source.ErrInvalid) {
		t.Errorf("Prefetch of a bad name = %v, want ErrInvalid before any request", err)
	}

	st, err := g.Status(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.GetMembers()) != 1 || len(st.GetMembers()[0].GetVersions()) != 1 {
		t.Errorf("status = %v, want this DP holding the prefetched version", st)
	}

	if err := g.ReportStatus(ctx, source.Status{ID: "ep-1", Product: r.product, Version: r.version, Serial: 1, Result: "updated", Reported: time.Now()}); err != nil {
		t.Fatal(err)
	}
	eps, err := g.Endpoints(ctx, false, true)
	if err != nil || len(eps.GetEndpoints()) != 1 || eps.GetEndpoints()[0].GetStatus().GetId() != "ep-1" {
		t.Errorf("endpoints = %v, %v; want ep-1", eps, err)
	}

	folder := source.NewFile(r.root)
	found, err := source.Discover(ctx, []source.Source{g, folder}, "", source.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(found) != 2 || found[0] != source.Source(g) || found[1] != source.Source(folder) {
		t.Errorf("Discover = %v, want the DP (the one given) then the folder", found)
	}
	if _, err := source.Discover(ctx, []source.Source{folder}, "", source.Options{}); !errors.Is(err, source.ErrInvalid) {
		t.Errorf("Discover without a DP = %v, want ErrInvalid", err)
	}
}
