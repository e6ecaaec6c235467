package manifest

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

var (
	digestA = strings.Repeat("a", 64)
	digestB = strings.Repeat("b", 64)
	when    = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
)

func TestValidName(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		ok   bool
	}{
		{"kes", true},
		{"KES-12.1_x86.64", true},
		{"a", true},
		{strings.Repeat("v", 128), true},
		{strings.Repeat("v", 129), false},
		{strings.Repeat("v", 1<<20), false},
		{"", false},
		{".", false},
		{"..", false},
		{"...", true},
		{"a/b", false},
		{`a\b`, false},
		{"a b", false},
		{"a\x00", false},
		{"é", false},
		{"a:b", false},
	}
	for _, tt := range tests {
		t.Run(tt.name[:min(len(tt.name), 20)], func(t *testing.T) {
			t.Parallel()
			err := ValidName(tt.name)
			if (err == nil) != tt.ok {
				t.Fatalf("ValidName(%q) = %v, want ok=%v", tt.name, err, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
		})
	}
}

func TestValidPath(t *testing.T) {
	t.Parallel()
	tests := []struct {
		path string
		ok   bool
	}{
		{"a", true},
		{"bases/av-001.bin", true},
		{"modules/x/y/z.dll", true},
		{".hidden", true},
		{"a..b", true},
		{"..a", true},
		{"", false},
		{".", false},
		{"..", false},
		{"../a", false},
		{"a/../b", false},
		{"a/..", false},
		{"/etc/passwd", false},
		{"/", false},
		{"a//b", false},
		{"./a", false},
		{"a/", false},
		{"a/./b", false},
		{`a\b`, false},
		{`..\..\windows`, false},
		{"a\x00b", false},
		{"a\nb", false},
		{"C:/x", false},
		{"c:", false},
		{"\xff\xfe", false},
		{strings.Repeat("a", MaxPathLen), true},
		{strings.Repeat("a", MaxPathLen+1), false},
	}
	for _, tt := range tests {
		t.Run(tt.path[:min(len(tt.path), 20)], func(t *testing.T) {
			t.Parallel()
			err := ValidPath(tt.path)
			if (err == nil) != tt.ok {
				t.Fatalf("ValidPath(%q) = %v, want ok=%v", tt.path, err, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
		})
	}
}

func TestValidDigest(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, digest string
		ok           bool
	}{
		{"ok", SHA256Hex([]byte("x")), true},
		{"all hex", "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", true},
		{"upper", strings.ToUpper(SHA256Hex([]byte("x"))), false},
		{"short", digestA[:63], false},
		{"long", digestA + "a", false},
		{"empty", "", false},
		{"non-hex", strings.Repeat("g", 64), false},
		{"slash", strings.Repeat("a", 63) + "/", false},
		{"huge", strings.Repeat("a", 1<<16), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := ValidDigest(tt.digest)
			if (err == nil) != tt.ok {
				t.Fatalf("ValidDigest(%q) = %v, want ok=%v", tt.digest, err, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
		})
	}
}

func validManifest() *Manifest {
	return &Manifest{
		Product:   "kes",
		Version:   "12.1.0.1",
		Serial:    7,
		Published: when,
		Files: []File{
			{Path: "bases/a.bin", Size: 10, SHA256: digestA, Component: ComponentDatabases},
			{Path: "bases/b.bin", Size: 10, SHA256: digestA, Component: ComponentDatabases},
			{Path: "modules/m.dll", Size: 5, SHA256: digestB, Component: ComponentModules},
		},
	}
}

func TestManifest_Validate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		mutate  func(m *Manifest)
		wantErr string // substring; "" means valid
	}{
		{"valid", func(m *Manifest) {}, ""},
		{"no files", func(m *Manifest) { m.Files = nil }, ""},
		{"zero size", func(m *Manifest) { m.Files[0].Size = 0 }, ""},
		{"empty product", func(m *Manifest) { m.Product = "" }, "product"},
		{"bad product", func(m *Manifest) { m.Product = "../x" }, "product"},
		{"huge version", func(m *Manifest) { m.Version = strings.Repeat("1", 10000) }, "version"},
		{"dotdot version", func(m *Manifest) { m.Version = ".." }, "version"},
		{"zero serial", func(m *Manifest) { m.Serial = 0 }, "serial"},
		{"no time", func(m *Manifest) { m.Published = time.Time{} }, "published"},
		{"parent escape", func(m *Manifest) { m.Files[0].Path = "../etc/passwd" }, `".."`},
		{"inner escape", func(m *Manifest) { m.Files[0].Path = "a/../../b" }, `".."`},
		{"absolute", func(m *Manifest) { m.Files[0].Path = "/etc/passwd" }, "relative"},
		{"backslash", func(m *Manifest) { m.Files[0].Path = `bases\a.bin` }, "backslash"},
		{"unclean", func(m *Manifest) { m.Files[0].Path = "bases//a.bin" }, "clean"},
		{"empty path", func(m *Manifest) { m.Files[0].Path = "" }, "empty"},
		{"duplicate", func(m *Manifest) { m.Files[1].Path = "bases/a.bin" }, "twice"},
		{"file is dir", func(m *Manifest) { m.Files[1].Path = "bases/a.bin/c" }, "parent"},
		{"dir is file", func(m *Manifest) { m.Files[2].Path = "bases" }, "parent"},
		{"deep conflict", func(m *Manifest) { m.Files[0].Path = "x"; m.Files[1].Path = "x/y/z/w" }, "parent"},
		{"negative size", func(m *Manifest) { m.Files[0].Size = -1 }, "negative"},
		{"bad digest", func(m *Manifest) { m.Files[0].SHA256 = "abc" }, "digest"},
		{"upper digest", func(m *Manifest) { m.Files[0].SHA256 = strings.ToUpper(digestA) }, "digest"},
		{"bad component", func(m *Manifest) { m.Files[0].Component = "drivers" }, "component"},
		{"empty component", func(m *Manifest) { m.Files[0].Component = "" }, "component"},
		{"chunked", func(m *Manifest) { m.Files[0].Chunks = []Chunk{{digestB, 4}, {digestB, 6}} }, ""},
		{"empty chunk list", func(m *Manifest) { m.Files[0].Chunks = []Chunk{} }, ""},
		{"chunks short", func(m *Manifest) { m.Files[0].Chunks = []Chunk{{digestB, 4}, {digestB, 5}} }, "add up to 9 bytes"},
		{"chunks long", func(m *Manifest) { m.Files[0].Chunks = []Chunk{{digestB, 4}, {digestB, 7}} }, "exceed"},
		{"chunk overflow", func(m *Manifest) {
			m.Files[0].Chunks = []Chunk{{digestB, 1 << 62}, {digestB, 1 << 62}, {digestB, 1 << 62}}
		}, "exceed"},
		{"chunk zero size", func(m *Manifest) { m.Files[0].Chunks = []Chunk{{digestB, 0}, {digestB, 10}} }, "not positive"},
		{"chunk negative size", func(m *Manifest) { m.Files[0].Chunks = []Chunk{{digestB, -1}, {digestB, 11}} }, "not positive"},
		{"chunk bad digest", func(m *Manifest) { m.Files[0].Chunks = []Chunk{{"xyz", 10}} }, "chunks[0]: sha256"},
		{"chunks of empty file", func(m *Manifest) { m.Files[0].Size = 0; m.Files[0].Chunks = []Chunk{{digestB, 1}} }, "empty file"},
		{"too many chunks", func(m *Manifest) {
			m.Files[0].Size = MaxChunks + 1
			m.Files[0].Chunks = make([]Chunk, MaxChunks+1)
		}, "more than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m := validManifest()
			tt.mutate(m)
			err := m.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil, want error containing %q", tt.wantErr)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %q does not contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestLatest_Validate(t *testing.T) {
	t.Parallel()
	valid := func() *Latest {
		return &Latest{Product: "kes", Version: "1", Serial: 1, ManifestSHA256: digestA, Published: when}
	}
	tests := []struct {
		name   string
		mutate func(l *Latest)
		ok     bool
	}{
		{"valid", func(l *Latest) {}, true},
		{"bad product", func(l *Latest) { l.Product = "a/b" }, false},
		{"bad version", func(l *Latest) { l.Version = "" }, false},
		{"zero serial", func(l *Latest) { l.Serial = 0 }, false},
		{"bad digest", func(l *Latest) { l.ManifestSHA256 = "xyz" }, false},
		{"no time", func(l *Latest) { l.Published = time.Time{} }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			l := valid()
			tt.mutate(l)
			err := l.Validate()
			if (err == nil) != tt.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
		})
	}
}

func TestParseManifest(t *testing.T) {
	t.Parallel()
	m := validManifest()
	data, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseManifest(data)
	if err != nil {
		t.Fatalf("ParseManifest: %v", err)
	}
	if got.Product != m.Product || got.Serial != m.Serial || !got.Published.Equal(m.Published) || len(got.Files) != 3 || !reflect.DeepEqual(got.Files[2], m.Files[2]) {
		t.Fatalf("roundtrip mismatch: %+v", got)
	}
	tests := []struct {
		name string
		data string
	}{
		{"empty", ""},
		{"not json", "hello"},
		{"array", "[]"},
		{"trailing", string(data) + "{}"},
		{"wrong type", `{"product":"kes","version":"1","serial":"1"}`},
		{"negative serial", `{"product":"kes","version":"1","serial":-1}`},
		{"missing fields", `{}`},
		{"bad path", strings.Replace(string(data), "bases/a.bin", "../a.bin", 1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if _, err := ParseManifest([]byte(tt.data)); !errors.Is(err, ErrInvalid) {
				t.Fatalf("ParseManifest(%.40q) = %v, want ErrInvalid", tt.data, err)
			}
		})
	}
	t.Run("unknown field ignored", func(t *testing.T) {
		t.Parallel()
		d := strings.Replace(string(data), `"product"`, `"future": [1,2], "product"`, 1)
		if _, err := ParseManifest([]byte(d)); err != nil {
			t.Fatalf("ParseManifest with unknown field: %v", err)
		}
	})
}

func TestParseLatest(t *testing.T) {
	t.Parallel()
	l := &Latest{Product: "kes", Version: "1", Serial: 3, ManifestSHA256: digestB, Published: when}
	data, err := l.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseLatest(data)
	if err != nil {
		t.Fatal(err)
	}
	if *got != *l {
		t.Fatalf("got %+v, want %+v", got, l)
	}
	want := `{
  "product": "kes",
  "version": "1",
  "serial": 3,
  "manifest_sha256": "` + digestB + `",
  "published": "2026-01-02T03:04:05Z"
}
`
	if string(data) != want {
		t.Fatalf("encoding:\n%s\nwant:\n%s", data, want)
	}
	if _, err := ParseLatest([]byte(`{"product":"kes"}`)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("incomplete latest: %v, want ErrInvalid", err)
	}
}

func TestManifest_SizeAndBlobs(t *testing.T) {
	t.Parallel()
	m := validManifest()
	if got := m.Size(); got != 25 {
		t.Errorf("Size() = %d, want 25", got)
	}
	b := m.Blobs()
	if len(b) != 2 || b[0].SHA256 != digestA || b[0].Path != "bases/a.bin" || b[1].SHA256 != digestB {
		t.Errorf("Blobs() = %+v", b)
	}
}

// A chunked file is stored as its chunks: Blobs lists them, once each,
// and never the whole file's digest.
func TestManifest_Blobs_Chunked(t *testing.T) {
	t.Parallel()
	digestC, digestD := strings.Repeat("c", 64), strings.Repeat("d", 64)
	m := validManifest()
	m.Files[0].Chunks = []Chunk{{digestC, 4}, {digestD, 2}, {digestC, 4}}
	m.Files[2].Chunks = []Chunk{{digestD, 2}, {digestB, 3}} // digestB is also this file's own digest
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, b := range m.Blobs() {
		got = append(got, fmt.Sprintf("%s:%c:%d", b.Path, b.SHA256[0], b.Size))
	}
	// a.bin's chunks c and d; b.bin unchunked (digestA); m.dll's chunk b.
	want := []string{"bases/a.bin:c:4", "bases/a.bin:d:2", "bases/b.bin:a:10", "modules/m.dll:b:3"}
	if !slices.Equal(got, want) {
		t.Fatalf("Blobs() = %v, want %v", got, want)
	}
	if p := m.Files[1].Parts(); len(p) != 1 || !reflect.DeepEqual(p[0], m.Files[1]) {
		t.Fatalf("Parts of an unchunked file = %+v", p)
	}
}

func TestPaths(t *testing.T) {
	t.Parallel()
	for got, want := range map[string]string{
		LatestPath("kes"):                 "kes/latest.json",
		ManifestPath("kes", "1.2"):        "kes/1.2/manifest.json",
		SigPath(LatestPath("kes")):        "kes/latest.json.minisig",
		SigPath(ManifestPath("kes", "1")): "kes/1/manifest.json.minisig",
		BlobPath(digestA):                 "blobs/sha256/" + digestA,
	} {
		if got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
}

func FuzzParseManifest(f *testing.F) {
	data, _ := validManifest().Marshal()
	f.Add(data)
	f.Add([]byte(`{"product":"p","version":"v","serial":1,"published":"2026-01-01T00:00:00Z","files":[{"path":"a/../b","size":1,"sha256":"` + digestA + `","component":"databases"}]}`))
	f.Add([]byte(`{"files":[{"path":"a"},{"path":"a/b"}]}`))
	f.Add([]byte(`null`))
	chunked := validManifest()
	chunked.Files[0].Chunks = []Chunk{{digestB, 4}, {digestA, 6}}
	chunked.Files[2].Chunks = []Chunk{{digestB, 5}}
	data, _ = chunked.Marshal()
	f.Add(data)
	head := `{"product":"p","version":"v","serial":1,"published":"2026-01-01T00:00:00Z","files":[{"path":"a","component":"databases","sha256":"` + digestA + `",`
	f.Add([]byte(head + `"size":3,"chunks":[{"sha256":"` + digestB + `","size":1},{"sha256":"` + digestB + `","size":2}]}]}`))
	f.Add([]byte(head + `"size":3,"chunks":[{"sha256":"` + digestB + `","size":9223372036854775807},{"sha256":"` + digestB + `","size":9223372036854775807}]}]}`))
	f.Add([]byte(head + `"size":0,"chunks":[{"sha256":"` + digestB + `","size":0}]}]}`))
	f.Add([]byte(head + `"size":1,"chunks":[{"sha256":"B","size":1}]}]}`))
	f.Add([]byte(head + `"size":1,"chunks":null}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseManifest(data)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		for _, f := range m.Files {
			if ValidPath(f.Path) != nil {
				t.Fatalf("accepted invalid path %q", f.Path)
			}
			var sum int64
			for _, c := range f.Chunks {
				if c.Size <= 0 || ValidDigest(c.SHA256) != nil {
					t.Fatalf("accepted invalid chunk %+v of %q", c, f.Path)
				}
				sum += c.Size
			}
			if len(f.Chunks) > 0 && sum != f.Size {
				t.Fatalf("accepted chunks of %d bytes for %q of %d", sum, f.Path, f.Size)
			}
		}
		for _, b := range m.Blobs() {
			if b.Size < 0 || ValidDigest(b.SHA256) != nil {
				t.Fatalf("Blobs() lists an invalid blob %+v", b)
			}
		}
		// A valid manifest re-encodes to a valid manifest.
		again, err := m.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParseManifest(again); err != nil {
			t.Fatalf("re-encoded manifest invalid: %v", err)
		}
	})
}
