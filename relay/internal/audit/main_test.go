package audit

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/tetherhq/tether/internal/pgtest"
)

// TestMain checks that no goroutine of the audit log (its writer, its
// periodic flushes, its retries) outlives the tests, which all stop what
// they start.
func TestMain(m *testing.M) {
	code := m.Run()
	pgtest.StopShared()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}
