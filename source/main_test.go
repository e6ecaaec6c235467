package source_test

import (
	"testing"

	"github.com/dpcache/dpcache/e2e/testenv"
)

// Sources hold connections and streams: every test closes what it opens, and
// goleak proves that Close (of a Source and of a blob reader) releases them.
// The run ends with the tests skipped for a missing tool, if any.
func TestMain(m *testing.M) { testenv.VerifyTestMain(m) }
