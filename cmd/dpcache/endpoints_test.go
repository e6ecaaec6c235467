package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/dpcache/dpcache/node"
	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
)

// `endpoints --json` prints exactly docs/design.md's shape.
func TestEndpointsJSON_Shape(t *testing.T) {
	t.Parallel()
	resp := &pb.ListEndpointsResponse{Endpoints: []*pb.EndpointInfo{
		{Status: &pb.EndpointStatus{Id: "ep-1", Hostname: "h1", Site: "paris", Product: "av", Version: "2", Serial: 2, Result: "updated", Error: "not shown",
			Reported: timestamppb.New(time.Date(2025, 3, 14, 9, 26, 53, 0, time.UTC))}, Age: node.Age3d},
		{Status: &pb.EndpointStatus{Id: "ep-2", Product: "av"}, Age: node.AgeCurrent},
	}}
	var buf bytes.Buffer
	if err := json.NewEncoder(&buf).Encode(toEndpointsJSON(resp)); err != nil {
		t.Fatal(err)
	}
	want := `{"endpoints":[` +
		`{"id":"ep-1","hostname":"h1","site":"paris","product":"av","version":"2","serial":2,"result":"updated","reported":"2025-03-14T09:26:53Z","age":"3d"},` +
		`{"id":"ep-2","hostname":"","site":"","product":"av","version":"","serial":0,"result":"","reported":"","age":"current"}]}` + "\n"
	if buf.String() != want {
		t.Fatalf("endpoints --json:\n%s\nwant:\n%s", buf.String(), want)
	}
	buf.Reset()
	json.NewEncoder(&buf).Encode(toEndpointsJSON(&pb.ListEndpointsResponse{}))
	if buf.String() != `{"endpoints":[]}`+"\n" {
		t.Fatalf("no endpoints: %s, want an empty list", buf.String())
	}
	buf.Reset()
	printEndpoints(&buf, toEndpointsJSON(resp), false)
	for _, s := range []string{"ID", "AGE", "ep-1", "paris", "3d", "2 endpoints on 2 hosts: 1 current, 0 24h, 1 3d, 0 7d; 0 failed, 0 held"} {
		if !strings.Contains(buf.String(), s) {
			t.Errorf("table lacks %q:\n%s", s, buf.String())
		}
	}
}

// Two install roots on one host are two endpoints on one host; failed and
// held runs are shown as such and counted.
func TestPrintEndpoints_HostsFailedHeld(t *testing.T) {
	t.Parallel()
	resp := &pb.ListEndpointsResponse{Endpoints: []*pb.EndpointInfo{
		{Status: &pb.EndpointStatus{Id: "a1", Hostname: "pc-1", Product: "av", Version: "2", Serial: 2, Result: "updated"}, Age: node.AgeCurrent},
		{Status: &pb.EndpointStatus{Id: "a2", Hostname: "pc-1", Product: "av", Version: "1", Serial: 1, Result: "held"}, Age: node.Age3d},
		{Status: &pb.EndpointStatus{Id: "b1", Hostname: "pc-2", Product: "av", Result: "failed"}, Age: node.Age7d},
	}}
	var buf bytes.Buffer
	printEndpoints(&buf, toEndpointsJSON(resp), false)
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 5 {
		t.Fatalf("want a header, 3 rows and a summary:\n%s", buf.String())
	}
	for i, want := range []string{"held", "failed"} {
		if f := strings.Fields(lines[2+i]); !slices.Contains(f, want) {
			t.Errorf("row %q does not show %q", lines[2+i], want)
		}
	}
	if want := "3 endpoints on 2 hosts: 1 current, 0 24h, 1 3d, 1 7d; 1 failed, 1 held"; lines[4] != want {
		t.Errorf("summary = %q, want %q", lines[4], want)
	}
}

func TestParseBytes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want int64
		err  bool
	}{
		{"0", 0, false},
		{"1048576", 1 << 20, false},
		{"10MiB", 10 << 20, false},
		{"500KiB", 500 << 10, false},
		{"500k", 500 << 10, false},
		{"1.5 GiB", 3 << 29, false},
		{"2GB", 2e9, false},
		{"3 mb", 3e6, false},
		{"7B", 7, false},
		{"1TiB", 1 << 40, false},
		{"", 0, true},
		{"MiB", 0, true},
		{"-1", 0, true},
		{"1e9", 0, true},
		{"ten", 0, true},
		{"10 MiBs", 0, true},
		{"inf", 0, true},
	}
	for _, tt := range tests {
		got, err := parseBytes(tt.in)
		if (err != nil) != tt.err || got != tt.want {
			t.Errorf("parseBytes(%q) = %d, %v; want %d, error %v", tt.in, got, err, tt.want, tt.err)
		}
		if err != nil && !strings.Contains(err.Error(), tt.in) {
			t.Errorf("parseBytes(%q): error %q does not name the input", tt.in, err)
		}
	}
	var w node.Window
	if err := (windowFlag{&w}).Set("22:00-06:00"); err != nil || w.String() != "22:00-06:00" {
		t.Errorf("--upstream-window 22:00-06:00: %v, %v", w, err)
	}
	if err := (windowFlag{&w}).Set("22h"); err == nil {
		t.Error("--upstream-window 22h accepted")
	}
}

// Without a terminal, prefetch prints progress lines, then the result.
func TestShowPrefetch_Lines(t *testing.T) {
	t.Parallel()
	msgs := []*pb.PrefetchResponse{
		{Product: "av", Version: "3", Serial: 3},
		{Product: "av", Version: "3", Serial: 3, BlobsTotal: 2, BytesTotal: 4 << 20},
		{Product: "av", Version: "3", Serial: 3, BlobsTotal: 2, BlobsDone: 1, BytesTotal: 4 << 20, BytesDone: 1 << 20},
		{Product: "av", Version: "3", Serial: 3, BlobsTotal: 2, BlobsDone: 2, BytesTotal: 4 << 20, BytesDone: 4 << 20, Done: true},
	}
	recv := func(ms []*pb.PrefetchResponse, end error) func() (*pb.PrefetchResponse, error) {
		return func() (*pb.PrefetchResponse, error) {
			if len(ms) == 0 {
				return nil, end
			}
			m := ms[0]
			ms = ms[1:]
			return m, nil
		}
	}
	var buf bytes.Buffer
	if err := showPrefetch(&buf, recv(msgs, io.EOF), &progress{}, "dp:7340"); err != nil {
		t.Fatal(err)
	}
	want := "av 3 (serial 3): 0/2 blobs, 0 B of 4.0 MiB (0%)\n" +
		"av 3 (serial 3): 1/2 blobs, 1.0 MiB of 4.0 MiB (25%)\n" +
		"av 3 (serial 3) held whole: 2 blobs, 4.0 MiB\n"
	if buf.String() != want {
		t.Fatalf("output:\n%s\nwant:\n%s", buf.String(), want)
	}
	if err := showPrefetch(io.Discard, recv(msgs[:2], io.EOF), &progress{}, "dp:7340"); err == nil || !strings.Contains(err.Error(), "dp:7340") {
		t.Errorf("stream ended before done: %v, want an error naming the DP", err)
	}
	if err := showPrefetch(io.Discard, recv(nil, errors.New("unavailable")), &progress{}, "dp:7340"); err == nil || !strings.Contains(err.Error(), "unavailable") {
		t.Errorf("stream error: %v", err)
	}
}
