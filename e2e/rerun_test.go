package e2e

import (
	"os"
	"path/filepath"
	"testing"
)

// The vendor's setup jobs of deploy/compose/branch-office.yaml run again on
// every `docker-compose up`: keygen --if-missing keeps an existing pair and
// publish --if-new leaves an existing version alone, exit 0 both; anything
// else that is there still fails, with one line.
func TestE2E_SetupJobsRunAgain(t *testing.T) {
	t.Parallel()
	work := t.TempDir()
	name := filepath.Join(work, "vendor")
	mustContain(t, mustRun(t, "keygen", "-o", name, "--if-missing").stdout, "wrote "+name+".key")
	pub, err := os.ReadFile(name + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	mustContain(t, mustRun(t, "keygen", "-o", name, "--if-missing").stdout, "kept "+name+".key and "+name+".pub")
	if again, err := os.ReadFile(name + ".pub"); err != nil || string(again) != string(pub) {
		t.Errorf("keygen --if-missing changed %s.pub (%v)", name, err)
	}
	mustContain(t, errorLine(t, dpcache(t, "keygen", "-o", name)), "already exists")

	// Two halves of different pairs, and half a pair, are refused.
	other := filepath.Join(work, "other")
	mustRun(t, "keygen", "-o", other)
	if err := os.Rename(other+".pub", name+".pub"); err != nil {
		t.Fatal(err)
	}
	mustContain(t, errorLine(t, dpcache(t, "keygen", "-o", name, "--if-missing")), "are not a key pair")
	if err := os.Remove(name + ".pub"); err != nil {
		t.Fatal(err)
	}
	mustContain(t, errorLine(t, dpcache(t, "keygen", "-o", name, "--if-missing")), name+".key exists but "+name+".pub does not")

	src := filepath.Join(work, "src")
	writeFiles(t, src, map[string]int{"databases/base.dat": 4 << 10})
	repo := filepath.Join(work, "repo")
	args := []string{"publish", "--repo", repo, "--key", other + ".key", "--product", product, "--version", "1.0", "--if-new", src}
	mustContain(t, mustRun(t, args...).stdout, "published "+product+" 1.0 (serial 1)")
	mustContain(t, mustRun(t, args...).stdout, product+" 1.0 is already published in "+repo+"; nothing done (--if-new)")
	mustContain(t, errorLine(t, dpcache(t, append(args[:len(args)-2:len(args)-2], src)...)), "version already published")
	// Nothing changed: 1.0 is still serial 1.
	mustContain(t, readFileString(filepath.Join(repo, product, "latest.json")), `"serial": 1,`)
}
