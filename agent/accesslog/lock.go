package accesslog

import (
	"errors"
	"fmt"

	"github.com/tetherhq/tether/agent/internal/filelock"
)

// lockFile takes an exclusive lock on path (created when missing), so that
// two processes never write the same log; the lock goes with the process.
func lockFile(path string) (unlock func(), err error) {
	l, err := filelock.Lock(path)
	if errors.Is(err, filelock.ErrLocked) {
		return nil, fmt.Errorf("another process (an agent with the same access log path?) holds %s: %w", path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("lock file: %w", err)
	}
	return l.Unlock, nil
}
