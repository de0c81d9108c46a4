// Package atomicfile replaces files so that a reader, or a process that
// starts after a crash, sees the old content or the new, never a part.
// Every file the relay rewrites in place (CA files, the roster, cached
// keys, certificates it writes for operators) goes through Write.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// Write writes data with mode perm to a temporary file in path's
// directory, syncs it, renames it over path, and syncs the directory, so
// that once Write returns the new content is what a start after a power
// loss reads (without the directory's sync, the rename itself may not
// be on disk yet).
//
// A process killed between the temporary file's creation and its rename
// leaves it behind (.<name>.tmp<digits>); Write removes those of path
// older than StaleTemp first, so that crashes over months do not pile them
// up (a younger one may be another process's write in progress).
func Write(path string, data []byte, perm os.FileMode) error {
	RemoveStaleTemps(path, time.Now())
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(perm); err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	ok = true
	return SyncDir(filepath.Dir(path))
}

// SyncDir makes the renames and new files in dir durable. (Windows
// cannot sync a directory; its file systems journal the rename.)
func SyncDir(dir string) error {
	if runtime.GOOS == "windows" {
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// StaleTemp is the age past which a temporary file left beside its target
// by an interrupted Write is removed (RemoveStaleTemps).
const StaleTemp = time.Hour

// RemoveStaleTemps removes, best effort, the temporary files an
// interrupted Write of path left (.<name>.tmp followed by the digits
// os.CreateTemp chose) that were last modified more than StaleTemp before
// now.
func RemoveStaleTemps(path string, now time.Time) {
	dir, prefix := filepath.Dir(path), "."+filepath.Base(path)+".tmp"
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), prefix)
		if !ok || rest == "" || strings.Trim(rest, "0123456789") != "" || !e.Type().IsRegular() {
			continue
		}
		if fi, err := e.Info(); err == nil && now.Sub(fi.ModTime()) > StaleTemp {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}
