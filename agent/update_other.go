//go:build !unix

package agent

import (
	"errors"
	"fmt"
	"os"

	"github.com/minio/selfupdate"
)

// failedSuffix names the new binary moved aside by a rollback.
const failedSuffix = ".failed"

// installBinary moves the checked binary at newPath in with
// selfupdate.CommitBinary: Windows cannot replace a running executable by
// renaming another file over it, but it can rename the running one away,
// so the binary becomes opts.OldSavePath and the new one takes its place;
// when the second rename fails, the first is undone.
func installBinary(_ string, opts selfupdate.Options) error {
	err := selfupdate.CommitBinary(opts)
	if rerr := selfupdate.RollbackError(err); rerr != nil {
		return fmt.Errorf("%v; and restoring the previous binary failed too: %v (put %s back at %s by hand)", err, rerr, opts.OldSavePath, opts.TargetPath)
	}
	return err
}

// restoreBinary puts previous back at binary. The new binary is moved
// aside first (Windows cannot replace a running executable); when the
// previous one cannot then take its place, the new one is moved back.
func restoreBinary(previous, binary string) error {
	aside := binary + failedSuffix
	os.Remove(aside)
	movedAside := true
	if err := rename(binary, aside); errors.Is(err, os.ErrNotExist) {
		movedAside = false
	} else if err != nil {
		return err
	}
	if err := rename(previous, binary); err != nil {
		if movedAside {
			if berr := rename(aside, binary); berr != nil {
				return fmt.Errorf("%v; and moving the new binary back failed too: %v (put %s or %s back at %s by hand)", err, berr, previous, aside, binary)
			}
		}
		return err
	}
	os.Remove(aside) // fails while it runs; harmless
	return nil
}
