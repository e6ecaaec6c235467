package e2e

import (
	"encoding/base64"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dpcache/dpcache/e2e/testenv"
)

// A blob damaged at the origin is refused, straight from the origin and
// through a DP (DataLoss), and the installed version stays whole; once the
// origin is repaired the same DP serves the version, so it kept no bad
// bytes.
func TestE2E_CorruptBlobAtOrigin(t *testing.T) {
	t.Parallel()
	work := t.TempDir()
	k := vendorKeys(t, work, "vendor")
	src := filepath.Join(work, "src")
	v1 := writeFiles(t, src, map[string]int{"databases/base.dat": 1 << 20, "modules/engine.bin": 512 << 10})
	repo := filepath.Join(work, "repo")
	publish(t, repo, k, "1.0", src)
	origin := testenv.StartNginx(t, repo, testenv.NginxOptions{})
	ep := filepath.Join(work, "endpoint")
	if res := update(t, origin.URL, ep, k.pub); res.Status != "updated" || res.Version != "1.0" {
		t.Fatalf("install of 1.0 = %+v", res)
	}
	checkTree(t, current(ep), v1)

	// 2.0 adds a file whose blob is then damaged at the origin.
	v2 := maps.Clone(v1)
	maps.Copy(v2, writeFiles(t, src, map[string]int{"databases/daily.dat": 768 << 10}))
	publish(t, repo, k, "2.0", src)
	digest := v2["databases/daily.dat"]
	repair := flipByte(t, filepath.Join(repo, "blobs", "sha256", digest), 300_000)

	// Straight from the origin: the agent's own check refuses the bytes.
	line := errorLine(t, dpcache(t, updateArgs(origin.URL, ep, k.pub)...))
	t.Logf("error line from the origin: %s", line)
	mustContain(t, line, origin.URL)
	if !containsAny(line, digest, "daily.dat") || !containsAny(line, "corrupt", "sha256", "DataLoss") {
		t.Errorf("error %q names neither the file nor the digest, or does not say the content is corrupt", line)
	}
	checkTree(t, current(ep), v1)

	// Through a DP that holds nothing yet (so it passes 2.0 through): the DP
	// refuses to cache or serve the bytes, and says why.
	dp := startNode(t, origin.URL, k.pub)
	line = errorLine(t, dpcache(t, updateArgs(dp.URL(), ep, k.pub)...))
	t.Logf("error line from the DP: %s", line)
	mustContain(t, line, dp.URL())
	if !containsAny(line, digest, "daily.dat") || !containsAny(line, "corrupt", "DataLoss", "data loss") {
		t.Errorf("error %q names neither the file nor the digest, or does not say the content is corrupt", line)
	}
	checkTree(t, current(ep), v1)

	// Repaired at the origin: the same DP now delivers 2.0 whole.
	repair()
	var res updateResult
	testenv.WaitFor(t, eventually, "an update through the DP to succeed once the origin is repaired", func() bool {
		r := dpcache(t, updateArgs(dp.URL(), ep, k.pub)...)
		if r.code != 0 {
			return false
		}
		res = parseUpdate(t, r)
		return true
	})
	if res.Status != "updated" || res.Version != "2.0" {
		t.Fatalf("update after the repair = %+v, want 2.0 updated", res)
	}
	checkTree(t, current(ep), v2)
}

// signatureCase publishes a small version into its own folder of an nginx
// root, damages it, and checks that an update straight from nginx fails with
// one clear line naming the source and wantInError, and installs and
// downloads nothing.
type signatureCase struct {
	name        string
	damage      func(t *testing.T, repo string) // nil: none
	otherKey    bool                            // trust a key that did not sign
	wantInError []string
}

func runSignatureCases(t *testing.T, cases []signatureCase) {
	t.Helper()
	work := t.TempDir()
	k := vendorKeys(t, work, "vendor")
	other := vendorKeys(t, work, "other")
	src := filepath.Join(work, "src")
	writeFiles(t, src, map[string]int{"databases/base.dat": 256 << 10, "modules/engine.bin": 128 << 10})
	root := filepath.Join(work, "www")
	for i, tc := range cases {
		repo := filepath.Join(root, caseDir(i))
		publish(t, repo, k, "1.0", src)
		if tc.damage != nil {
			tc.damage(t, repo)
		}
	}
	origin := testenv.StartNginx(t, root, testenv.NginxOptions{})
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			url := origin.URL + caseDir(i) + "/"
			trust := k.pub
			if tc.otherKey {
				trust = other.pub
			}
			ep := filepath.Join(work, "endpoint-"+caseDir(i))
			line := errorLine(t, dpcache(t, updateArgs(url, ep, trust)...))
			t.Logf("error line: %s", line)
			mustContain(t, line, url)
			mustContain(t, line, tc.wantInError...)
			checkNotInstalled(t, ep)
			for _, e := range origin.Requests(t) {
				if strings.HasPrefix(e.URI, "/"+caseDir(i)+"/blobs/") {
					t.Errorf("the agent downloaded %s before the documents verified", e.URI)
				}
			}
		})
	}
}

func caseDir(i int) string { return "case" + string(rune('a'+i)) }

// Documents altered after signing, or signatures altered, are refused.
func TestE2E_BadSignature(t *testing.T) {
	t.Parallel()
	latest := func(repo string) string { return filepath.Join(repo, product, "latest.json") }
	man := func(repo string) string { return filepath.Join(repo, product, "1.0", "manifest.json") }
	runSignatureCases(t, []signatureCase{
		{
			name:        "latest.json altered",
			damage:      func(t *testing.T, repo string) { replaceInFile(t, latest(repo), `"serial": 1`, `"serial": 9`) },
			wantInError: []string{"latest.json", "signature"},
		},
		{
			name: "manifest.json altered",
			damage: func(t *testing.T, repo string) {
				replaceInFile(t, man(repo), `"component": "modules"`, `"component": "databases"`)
			},
			wantInError: []string{"manifest.json", "signature"},
		},
		{
			name:        "latest.json.minisig altered",
			damage:      func(t *testing.T, repo string) { corruptSignature(t, latest(repo)+".minisig") },
			wantInError: []string{"latest.json", "signature"},
		},
		{
			name:        "manifest.json.minisig altered",
			damage:      func(t *testing.T, repo string) { corruptSignature(t, man(repo)+".minisig") },
			wantInError: []string{"manifest.json", "signature"},
		},
	})
}

// Documents without their signature file are refused.
func TestE2E_MissingSignature(t *testing.T) {
	t.Parallel()
	remove := func(rel string) func(t *testing.T, repo string) {
		return func(t *testing.T, repo string) {
			if err := os.Remove(filepath.Join(repo, product, filepath.FromSlash(rel))); err != nil {
				t.Fatal(err)
			}
		}
	}
	runSignatureCases(t, []signatureCase{
		{name: "latest.json.minisig", damage: remove("latest.json.minisig"), wantInError: []string{"latest.json", "signature"}},
		{name: "manifest.json.minisig", damage: remove("1.0/manifest.json.minisig"), wantInError: []string{"manifest.json", "signature"}},
	})
}

// Documents signed by a key that --trust does not list are refused.
func TestE2E_UnknownKey(t *testing.T) {
	t.Parallel()
	runSignatureCases(t, []signatureCase{
		{name: "other key trusted", otherKey: true, wantInError: []string{"latest.json", "trust"}},
	})
}

// corruptSignature flips a bit of the ed25519 signature in a .minisig file,
// keeping its format and key id.
func corruptSignature(t *testing.T, file string) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(data), "\n")
	if len(lines) < 2 {
		t.Fatalf("%s: not a minisign signature:\n%s", file, data)
	}
	sig, err := base64.StdEncoding.DecodeString(strings.TrimSpace(lines[1]))
	if err != nil || len(sig) != 74 {
		t.Fatalf("%s line 2: not a minisign signature (%d bytes, %v)", file, len(sig), err)
	}
	sig[40] ^= 0x01 // inside the 64-byte signature, after algorithm and key id
	lines[1] = base64.StdEncoding.EncodeToString(sig)
	if err := os.WriteFile(file, []byte(strings.Join(lines, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
}
