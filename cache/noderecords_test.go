package cache

import (
	"bytes"
	"errors"
	"slices"
	"testing"
	"time"
)

func TestCache_PutManifest_DeleteManifest(t *testing.T) {
	t.Parallel()
	c := newTestCache(t)
	for _, v := range []string{"1", "2"} {
		if err := c.PutManifest("av", v, "av/"+v+"/manifest.json", []byte("m"+v), []byte("s"+v)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.PutDocument("av/1/latest.json", []byte("l"), []byte("s")); err != nil {
		t.Fatal(err)
	}
	refs, err := c.Manifests()
	if err != nil || !slices.Equal(refs, []VersionRef{{"av", "1"}, {"av", "2"}}) {
		t.Fatalf("Manifests = %v, %v", refs, err)
	}
	data, sig, err := c.Document("av/2/manifest.json")
	if err != nil || !bytes.Equal(data, []byte("m2")) || !bytes.Equal(sig, []byte("s2")) {
		t.Fatalf("Document = %q, %q, %v", data, sig, err)
	}
	// A missing document is not an error.
	if err := c.DeleteManifest("av", "1", "av/1/manifest.json", "av/1/latest.json", "av/1/absent"); err != nil {
		t.Fatal(err)
	}
	if refs, _ := c.Manifests(); !slices.Equal(refs, []VersionRef{{"av", "2"}}) {
		t.Fatalf("Manifests after delete = %v", refs)
	}
	for _, p := range []string{"av/1/manifest.json", "av/1/latest.json"} {
		if _, _, err := c.Document(p); !errors.Is(err, ErrNotFound) {
			t.Errorf("Document(%s) after delete: %v", p, err)
		}
	}
}

func TestCache_PublishedVersions(t *testing.T) {
	t.Parallel()
	c := newTestCache(t)
	at := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	if err := c.PutPublished("av", Published{Version: "1", Serial: 1, Published: at}); err != nil {
		t.Fatal(err)
	}
	if err := c.PutRecord(recPublished, "bad", []byte("{")); err != nil {
		t.Fatal(err)
	}
	got, err := c.PublishedVersions()
	if err != nil || len(got) != 1 || got[0].Product != "av" || got[0].Serial != 1 || !got[0].Published.Published.Equal(at) {
		t.Fatalf("PublishedVersions = %+v, %v", got, err)
	}
}

func TestCache_EndpointReports(t *testing.T) {
	t.Parallel()
	c := newTestCache(t)
	if err := c.PutEndpointReport("", "av", nil, 0); !errors.Is(err, ErrInvalid) {
		t.Fatalf("empty endpoint: %v", err)
	}
	for _, r := range []string{"old", "new"} {
		if err := c.PutEndpointReport("ep1", "av", []byte(r), 2); err != nil {
			t.Fatal(err)
		}
	}
	got := map[string]string{}
	if err := c.EndpointReports(func(k string, v []byte) error { got[k] = string(v); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got["ep1/av"] != "new" {
		t.Fatalf("EndpointReports = %q", got)
	}
	// At the limit: a new pair is refused, a kept one still updates.
	if err := c.PutEndpointReport("ep2", "av", []byte("x"), 2); err != nil {
		t.Fatal(err)
	}
	if err := c.PutEndpointReport("ep3", "av", []byte("x"), 2); !errors.Is(err, ErrFull) {
		t.Errorf("a third pair past a limit of 2: %v, want ErrFull", err)
	}
	if err := c.PutEndpointReport("ep1", "av", []byte("newer"), 2); err != nil {
		t.Errorf("updating a kept pair at the limit: %v", err)
	}
}
