//go:build unix

package agent

import (
	"fmt"
	"os"
	"syscall"
)

// execSelf replaces the process with the binary now at its path, with
// the same arguments and environment.
func execSelf(exe string) error {
	return fmt.Errorf("exec %s: %w", exe, syscall.Exec(exe, os.Args, os.Environ()))
}
