package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/dpcache/dpcache/e2e/testenv"
	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
)

// TestE2E_HostileRequests: requests that used to kill or crash a DP are
// refused and the DP goes on serving: a ReadBlob offset of 2^63 on a cached
// blob (the process exited: "slice bounds out of range"), and an HTTP
// Range ending at 2^63-1 on a blob still being fetched (the handler
// panicked), which is a valid range to the end.
func TestE2E_HostileRequests(t *testing.T) {
	t.Parallel()
	_, k, _, repo, files := vendorRepo(t, "1.0", map[string]int{"databases/small.dat": 64 << 10, "databases/big.dat": 8 << 20})
	// Slow enough that the big blob is still being fetched when asked.
	origin := testenv.StartNginx(t, repo, testenv.NginxOptions{LimitRate: "1m"})
	dp := startNode(t, origin.URL, k.pub)

	conn, err := grpc.NewClient("passthrough:///"+dp.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := pb.NewDistributionServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	if _, err := client.GetManifest(ctx, &pb.GetManifestRequest{Product: product, Version: "1.0"}); err != nil {
		t.Fatal(err)
	}
	small := files["databases/small.dat"]
	readAll := func(offset uint64) error {
		stream, err := client.ReadBlob(ctx, &pb.ReadBlobRequest{Sha256: small, Offset: offset})
		if err != nil {
			return err
		}
		for {
			if _, err := stream.Recv(); err != nil {
				if err == io.EOF {
					return nil
				}
				return err
			}
		}
	}
	if err := readAll(0); err != nil { // now cached
		t.Fatal(err)
	}
	for _, off := range []uint64{1 << 63, math.MaxUint64} {
		if err := readAll(off); status.Code(err) != codes.InvalidArgument {
			t.Errorf("ReadBlob at offset %d = %v, want InvalidArgument", off, err)
		}
	}

	big := files["databases/big.dat"]
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+dp.HTTP+"/repo/blobs/sha256/"+big, nil)
	req.Header.Set("Range", fmt.Sprintf("bytes=0-%d", int64(math.MaxInt64)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusPartialContent || len(body) != 8<<20 || hexSHA256(body) != big {
		t.Errorf("Range to 2^63-1 of a blob being fetched: %s, %d bytes, %v; want 206 and the whole blob", resp.Status, len(body), err)
	}

	if !healthz(dp.HTTP) || !grpcServing(t, dp.GRPC) || dp.proc.Exited() {
		t.Fatalf("the DP did not survive: %s", dp.proc.Stderr())
	}
	if strings.Contains(dp.proc.Stderr(), "panic") {
		t.Errorf("the DP logged a panic:\n%s", dp.proc.Stderr())
	}
}

func hexSHA256(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// TestE2E_HTTPRepoCorruptInFlight: a blob whose bytes are corrupt at the
// origin, fetched through a DP's /repo/ by five clients while the DP is
// still fetching it. No client may get a complete response: the DP holds
// back the last byte until the digest is verified and cuts the connection
// when it fails (3 of 5 clients got a normal 200 with the wrong body), and
// nothing marks the unverified response as cacheable for good.
func TestE2E_HTTPRepoCorruptInFlight(t *testing.T) {
	t.Parallel()
	_, k, _, repo, files := vendorRepo(t, "1.0", map[string]int{"databases/big.dat": 4 << 20})
	digest := files["databases/big.dat"]
	flipByte(t, filepath.Join(repo, "blobs", "sha256", digest), 3<<20)
	origin := testenv.StartNginx(t, repo, testenv.NginxOptions{LimitRate: "2m"})
	dp := startNode(t, origin.URL, k.pub)

	// The DP learns the blob from the version's manifest.
	if r, err := http.Get("http://" + dp.HTTP + "/repo/" + product + "/1.0/manifest.json"); err != nil || r.StatusCode != http.StatusOK {
		t.Fatalf("manifest through /repo/: %v %v", r, err)
	} else {
		r.Body.Close()
	}
	type result struct {
		status, cacheControl string
		n                    int
		err                  error
	}
	results := make(chan result, 5)
	for range 5 {
		go func() {
			resp, err := http.Get("http://" + dp.HTTP + "/repo/blobs/sha256/" + digest)
			if err != nil {
				results <- result{err: err}
				return
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			results <- result{resp.Status, resp.Header.Get("Cache-Control"), len(b), err}
		}()
	}
	for range 5 {
		r := <-results
		if r.err == nil {
			t.Errorf("a client got a complete response (%s, %d bytes) of a blob that fails verification", r.status, r.n)
		}
		if strings.Contains(r.cacheControl, "immutable") {
			t.Errorf("an unverified response says Cache-Control %q", r.cacheControl)
		}
	}
}

// TestE2E_LyingPeer (hardening finding 5): a DP of the site announces a
// version whole but serves wrong bytes for it (here its cache file was
// corrupted behind its back; a malicious member does the same). A DP that
// fetches from it sees the digest mismatch, drops those bytes and fetches
// the blob from upstream, so the endpoint gets the right files; before,
// every ReadBlob of the blob failed with DataLoss and the DP never went
// back to upstream.
func TestE2E_LyingPeer(t *testing.T) {
	t.Parallel()
	work, k, _, repo, files := vendorRepo(t, "1.0", map[string]int{"databases/base.dat": 3 << 20, "modules/engine.bin": 256 << 10})
	origin := testenv.StartNginx(t, repo, testenv.NginxOptions{})
	liar := startCluster(t, origin.URL, k.pub, []dpSpec{{"dp-2", "a"}})[0]
	mustRun(t, "prefetch", "--node", liar.GRPC, "--product", product)

	// The liar's stored bytes turn to zeros; it still holds the version
	// whole in its records and announces it.
	if err := liar.proc.Stop(); err != nil {
		t.Fatal(err)
	}
	zeroChunks(t, filepath.Join(liar.Data, "cache.db"))
	liar.restart(t)
	before := origin.BytesServed(t, "/blobs/")

	// dp-1 joins the site: the only holder it knows of is the liar.
	dp1 := startClusterDP(t, "dp-1", "a", origin.URL, k.pub, []string{liar.Gossip})
	dps := []*clusterDP{dp1, liar}
	waitMembers(t, dps, dps)
	dir := filepath.Join(work, "endpoint")
	if r := update(t, dps[0].URL(), dir, k.pub); r.Status != "updated" {
		t.Fatalf("update through dp-1 while dp-2 lies: %+v", r)
	}
	checkTree(t, current(dir), files)
	if got, want := origin.BytesServed(t, "/blobs/")-before, int64(3<<20+256<<10); got < want {
		t.Errorf("the origin served %d blob bytes after the liar's bytes were refused, want at least %d (the DP went back upstream)", got, want)
	}
	mustContain(t, dp1.proc.Stderr(), "delivered a corrupt blob", liar.GRPC)
}

// zeroChunks overwrites every stored blob chunk of a stopped DP's cache
// file with zeros of the same length.
func zeroChunks(t *testing.T, path string) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	n := 0
	if err := db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("chunks"))
		if b == nil {
			return fmt.Errorf("%s has no chunks bucket", path)
		}
		zeroed := map[string][]byte{}
		if err := b.ForEach(func(k, v []byte) error {
			zeroed[string(k)] = make([]byte, len(v))
			return nil
		}); err != nil {
			return err
		}
		for k, v := range zeroed {
			if err := b.Put([]byte(k), v); err != nil {
				return err
			}
			n++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatalf("%s holds no chunk to corrupt", path)
	}
}
