package source_test

import (
	"testing"

	"go.uber.org/goleak"
)

// Sources hold connections and streams: every test closes what it opens, and
// goleak proves that Close (of a Source and of a blob reader) releases them.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
