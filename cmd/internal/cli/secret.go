package cli

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// SecretWent says where a secret printed on w went, for the message on
// stderr that follows it: "(above)" on a terminal, "(written to FILE)"
// when w is a file (standard output redirected to one), "(on standard
// output)" otherwise (a pipe).
func SecretWent(w io.Writer) string {
	f, ok := w.(*os.File)
	if !ok {
		return "(on standard output)"
	}
	if isTerminal(f) {
		return "(above)"
	}
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return "(on standard output)"
	}
	// Linux names the file an open descriptor refers to; elsewhere, and
	// for a file since removed, say only that it went to a file.
	if p, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", f.Fd())); err == nil && filepath.IsAbs(p) {
		if st, err := os.Stat(p); err == nil && os.SameFile(st, fi) {
			return "(written to " + p + ")"
		}
	}
	return "(written to the file standard output goes to)"
}
