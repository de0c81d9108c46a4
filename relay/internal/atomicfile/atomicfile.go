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
)

// Write writes data with mode perm to a temporary file in path's
// directory, syncs it, renames it over path, and syncs the directory, so
// that once Write returns the new content is what a start after a power
// loss reads (without the directory's sync, the rename itself may not
// be on disk yet).
func Write(path string, data []byte, perm os.FileMode) error {
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
