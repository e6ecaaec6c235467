package manifest

import (
	"testing"

	"github.com/dpcache/dpcache/e2e/testenv"
)

// goleak checks that Publish stops its goroutines (chunking, hashing,
// syncing); the run ends with the tests skipped for a missing tool
// (minisign), if any.
func TestMain(m *testing.M) { testenv.VerifyTestMain(m) }
