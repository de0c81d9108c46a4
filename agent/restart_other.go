//go:build !unix

package agent

import "os"

// execSelf cannot replace the process here: exit and let the service
// manager start the new binary.
func execSelf(exe string) error {
	os.Exit(ExitRestart)
	return nil
}
