package node

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dpcache/dpcache/e2e/testenv"
	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/node/internal/catalog"
	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
)

// TestNode_ResignedUpstream: a DP holding a version whose latest.json
// expired shows itself stale; once the vendor re-signs the version
// (`dpcache resign`), the next refresh makes the new latest.json the DP's
// (GetLatest, WatchLatest and /repo/ serve it byte for byte), the version
// is held under the new serial, the DP is no longer stale, and nothing but
// latest.json was asked of the origin. A retention pass keeps the
// re-signed version's documents, and endpoints reporting either serial
// are current.
func TestNode_ResignedUpstream(t *testing.T) {
	v := newVendor(t)
	src := t.TempDir()
	for name, content := range map[string]string{"databases/base.dat": strings.Repeat("bases", 20000), "modules/engine.so": "engine"} {
		p := filepath.Join(src, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	past := time.Now().Add(-48 * time.Hour)
	pub, err := manifest.Publish(manifest.PublishOptions{Repo: v.repo, Product: "av", Version: "1", Key: v.key,
		Expires: 24 * time.Hour, Now: func() time.Time { return past }}, src)
	if err != nil {
		t.Fatal(err)
	}
	ngx := testenv.StartNginx(t, v.repo, testenv.NginxOptions{})
	n := startNode(t, v, ngx.URL, func(c *Config) { c.Products = []string{"av"} })
	testenv.WaitFor(t, 30*time.Second, "the expired version held whole, the DP stale", func() bool {
		hv, err := n.cache.LatestVersion("av")
		_, stale := n.catalog.Stale()["av"]
		return err == nil && hv.Serial == 1 && stale
	})
	before, err := n.cache.LatestVersion("av")
	if err != nil {
		t.Fatal(err)
	}
	blobs := pub.Manifest.Blobs()
	testenv.WaitFor(t, 30*time.Second, "every blob in nginx's access log", func() bool {
		return ngx.CountRequests(t, "/blobs/sha256/"+blobs[0].SHA256)+ngx.CountRequests(t, "/blobs/sha256/"+blobs[1].SHA256) == 2
	})
	asked := func() (blobs, manifests int) {
		return ngx.CountRequests(t, "") - ngx.CountRequests(t, "/latest.json") - ngx.CountRequests(t, "/latest.json.minisig") -
			ngx.CountRequests(t, "/manifest.json") - ngx.CountRequests(t, "/manifest.json.minisig"), ngx.CountRequests(t, "/manifest.json")
	}
	blobsAsked, manifestsAsked := asked()

	c := dial(t, n)
	ctx := testCtx(t)
	watch, err := c.WatchLatest(ctx, &pb.WatchLatestRequest{Product: "av"})
	if err != nil {
		t.Fatal(err)
	}
	if first, err := watch.Recv(); err != nil || !bytes.Equal(first.GetLatest().GetData(), readFile(t, v.repo, "av/latest.json")) {
		t.Fatalf("first announcement = %v, %v; want the held latest.json", first, err)
	}

	res, err := manifest.Resign(manifest.ResignOptions{Repo: v.repo, Product: "av", Key: v.key, Expires: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	wantData, wantSig := readFile(t, v.repo, "av/latest.json"), readFile(t, v.repo, "av/latest.json.minisig")
	testenv.WaitFor(t, 30*time.Second, "the re-signed latest.json served", func() bool {
		lr, err := c.GetLatest(ctx, &pb.GetLatestRequest{Product: "av"})
		if err != nil {
			t.Fatal(err)
		}
		return bytes.Equal(lr.GetLatest().GetData(), wantData) && bytes.Equal(lr.GetLatest().GetSignature(), wantSig)
	})
	if next, err := watch.Recv(); err != nil || !bytes.Equal(next.GetLatest().GetData(), wantData) {
		t.Errorf("announcement after the resign = %v, %v; want the re-signed latest.json", next, err)
	}
	testenv.WaitFor(t, 30*time.Second, "the DP no longer stale", func() bool { return len(n.catalog.Stale()) == 0 })
	hv, err := n.cache.LatestVersion("av")
	if err != nil || hv.Version != "1" || hv.Serial != res.Latest.Serial || !hv.Added.Equal(before.Added) {
		t.Errorf("held = %+v, %v; want version 1 at serial %d, added as before (%s)", hv, err, res.Latest.Serial, before.Added)
	}
	for _, f := range blobs {
		if !slices.Contains(n.catalog.VersionsOf(f.SHA256), catalog.ProductSerial{Product: "av", Version: "1", Serial: res.Latest.Serial}) {
			t.Errorf("blob %s is not known under serial %d (gossip announces holders by it)", f.Path, res.Latest.Serial)
		}
	}

	// A retention pass keeps the documents of the version held (its
	// manifest's serial is below the one it is held under).
	if err := n.retainer.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string][]byte{"/repo/av/latest.json": wantData, "/repo/av/latest.json.minisig": wantSig,
		"/repo/av/1/manifest.json": readFile(t, v.repo, "av/1/manifest.json")} {
		if _, got := httpGet(t, "http://"+n.HTTPAddr()+path); !bytes.Equal(got, want) {
			t.Errorf("GET %s = %.80q, want the repository's", path, got)
		}
	}
	if _, got := httpGet(t, "http://"+n.HTTPAddr()+"/metrics"); strings.Contains(string(got), "dpcache_upstream_stale{") {
		t.Error("/metrics still shows a stale upstream")
	}
	if _, got := httpGet(t, "http://"+n.HTTPAddr()+"/"); strings.Contains(string(got), `id="stale"`) {
		t.Error("the status page still shows the stale banner")
	}
	refs := n.catalog.AgeRefs()
	for _, serial := range []uint64{1, res.Latest.Serial} {
		if age := refs.Age("av", serial); age != catalog.AgeCurrent {
			t.Errorf("an endpoint reporting serial %d is %q, want current", serial, age)
		}
	}
	if b, m := asked(); b != blobsAsked || m != manifestsAsked {
		t.Errorf("after the resign the origin was asked for %d blobs and %d manifests, want none", b-blobsAsked, m-manifestsAsked)
	}
}

func readFile(t testing.TB, dir, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(rel)))
	if err != nil {
		t.Fatal(err)
	}
	return b
}
