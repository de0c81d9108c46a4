package audit

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/tetherhq/tether/relay/internal/atomicfile"
)

// Rotation rotates the audit file by size: once an append leaves it at
// MaxSize or more, the file is synced and renamed beside itself to
// RotatedName (its name, a dot and the time of the rotation, UTC, to the
// nanosecond), the directory synced, and a new file opened at its path.
// Records are whole lines in one file or the other: the rotation happens
// between appends (a failed append is cut back, as ever, in the file it
// was made to). Rotated files beyond MaxFiles, oldest first, are removed,
// except those rotated after KeepAfter (the newest backup's time: a
// restore from it replays the records written after it, from every file
// that holds them).
//
// Admin commands, which append to the file from other processes, do not
// rotate it; one that opened it before a rotation appends to the rotated
// file, which is still read (Files).
type Rotation struct {
	// MaxSize is the size in bytes at which the file is rotated; 0
	// never rotates it.
	MaxSize int64
	// MaxFiles is how many rotated files are kept; 0 keeps them all.
	MaxFiles int
	// KeepAfter, when set, returns the time after which rotated files
	// are kept whatever MaxFiles: those whose rotation came after it
	// hold records written after it. The zero time keeps none for it.
	KeepAfter func() (time.Time, error)
	// Now is the clock that names rotated files; nil: time.Now.
	Now func() time.Time
}

// rotatedLayout is the time of a rotated file's name. Its names sort as
// their times do.
const rotatedLayout = "20060102T150405.000000000Z"

// RotatedName is the name of the audit file at path rotated at t: path,
// a dot, t in UTC to the nanosecond.
func RotatedName(path string, t time.Time) string {
	return path + "." + t.UTC().Format(rotatedLayout)
}

// ParseRotated reports whether name (a file name, without directory) is
// that of the audit file called base rotated, and when it was rotated.
// Only the names RotatedName writes are taken.
func ParseRotated(base, name string) (time.Time, bool) {
	rest, ok := strings.CutPrefix(name, base+".")
	if !ok || base == "" || len(rest) != len(rotatedLayout) {
		return time.Time{}, false
	}
	t, err := time.Parse(rotatedLayout, rest)
	if err != nil || t.Format(rotatedLayout) != rest {
		return time.Time{}, false
	}
	return t, true
}

// rotated is a rotated audit file.
type rotated struct {
	path string
	at   time.Time
}

// rotatedFiles returns the rotated files of the audit file at path,
// oldest first.
func rotatedFiles(path string) ([]rotated, error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []rotated
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		if at, ok := ParseRotated(base, e.Name()); ok {
			out = append(out, rotated{path: filepath.Join(dir, e.Name()), at: at})
		}
	}
	slices.SortFunc(out, func(a, b rotated) int { return a.at.Compare(b.at) })
	return out, nil
}

// Files returns the files of the audit trail of the audit file at path,
// in the order they were written: its rotated files, oldest first, then
// path itself when it exists. A directory that does not exist holds none.
func Files(path string) ([]string, error) {
	rs, err := rotatedFiles(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("list the rotated audit files: %w", err)
	}
	var out []string
	for _, r := range rs {
		out = append(out, r.path)
	}
	if _, err := os.Stat(path); err == nil {
		out = append(out, path)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	return out, nil
}

// SetRotation has the file rotated as r says. Call it before Start and
// before records are added from other goroutines.
func (a *Log) SetRotation(r Rotation) {
	if r.Now == nil {
		r.Now = time.Now
	}
	a.fileMu.Lock()
	defer a.fileMu.Unlock()
	a.rot = r
}

// Rotations is how many times the file was rotated since Open.
func (a *Log) Rotations() int64 { return a.rotations.Load() }

// rotateIfFullLocked rotates the file once it holds MaxSize or more,
// after an append reached it. A rotation that fails is logged and tried
// again after the next append: the records stay in the file they were
// written to. fileMu is held.
func (a *Log) rotateIfFullLocked() {
	if a.rot.MaxSize <= 0 {
		return
	}
	if a.reopen {
		// Renamed, but no new file could be opened: open it now.
		if err := a.openNewLocked(); err != nil {
			a.log.Error("audit: open the audit file after rotating it; appending to the rotated file meanwhile", "path", a.path, "err", err)
			return
		}
	}
	fi, err := a.file.Stat()
	if err != nil || fi.Size() < a.rot.MaxSize {
		return
	}
	if err := a.rotateLocked(); err != nil {
		a.log.Error("audit: rotate the audit file", "path", a.path, "size", fi.Size(), "err", err)
		return
	}
	a.removeRotatedLocked()
}

// rotateLocked syncs the file, renames it to its rotated name, and opens
// a new one at its path. fileMu is held.
func (a *Log) rotateLocked() error {
	if err := a.file.Sync(); err != nil {
		return fmt.Errorf("sync before rotating: %w", err)
	}
	at := a.rot.Now()
	dest := RotatedName(a.path, at)
	for {
		if _, err := os.Lstat(dest); errors.Is(err, fs.ErrNotExist) {
			break
		}
		at = at.Add(time.Nanosecond)
		dest = RotatedName(a.path, at)
	}
	if err := os.Rename(a.path, dest); err != nil {
		return err
	}
	a.rotations.Add(1)
	a.log.Info("audit: audit file rotated", "path", a.path, "rotated_to", dest)
	// The file is appended to under its new name until the new one is
	// open: nothing is lost if that fails (reopen).
	a.reopen = true
	if err := a.openNewLocked(); err != nil {
		return fmt.Errorf("open a new audit file (appending to %s meanwhile): %w", dest, err)
	}
	return nil
}

// openNewLocked opens the file at path again (creating it) in place of
// the rotated one, and syncs the directory, whose entries (the rename,
// the new file) must survive a crash. fileMu is held.
func (a *Log) openNewLocked() error {
	f, err := os.OpenFile(a.path, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	old := a.file
	a.file, a.reopen = f, false
	if err := old.Close(); err != nil {
		a.log.Warn("audit: close the rotated audit file", "err", err)
	}
	if err := atomicfile.SyncDir(filepath.Dir(a.path)); err != nil {
		a.log.Warn("audit: sync the audit file's directory after rotating", "err", err)
	}
	return nil
}

// removeRotatedLocked removes the oldest rotated files beyond MaxFiles,
// but none rotated after KeepAfter. fileMu is held.
func (a *Log) removeRotatedLocked() {
	if a.rot.MaxFiles <= 0 {
		return
	}
	rs, err := rotatedFiles(a.path)
	if err != nil {
		a.log.Error("audit: list the rotated audit files", "err", err)
		return
	}
	excess := len(rs) - a.rot.MaxFiles
	if excess <= 0 {
		return
	}
	var keepAfter time.Time
	if a.rot.KeepAfter != nil {
		if keepAfter, err = a.rot.KeepAfter(); err != nil {
			// Unknown: a restore may need any of them.
			a.log.Error("audit: rotated audit files are kept beyond the count: the time of the newest backup cannot be read", "err", err)
			return
		}
	}
	removed := 0
	for _, r := range rs[:excess] {
		if !keepAfter.IsZero() && r.at.After(keepAfter) {
			// It and every newer one hold records written after the
			// newest backup: a restore from it replays them.
			a.log.Warn("audit: rotated audit files are kept beyond audit_file_max_files: they hold records written after the newest backup, which a restore from it needs; take a backup",
				"newest_backup", keepAfter.UTC(), "rotated_files", len(rs), "max_files", a.rot.MaxFiles)
			break
		}
		if err := os.Remove(r.path); err != nil {
			a.log.Error("audit: remove a rotated audit file", "path", r.path, "err", err)
			break
		}
		removed++
	}
	if removed > 0 {
		if err := atomicfile.SyncDir(filepath.Dir(a.path)); err != nil {
			a.log.Warn("audit: sync the audit file's directory", "err", err)
		}
		a.log.Info("audit: oldest rotated audit files removed", "removed", removed, "max_files", a.rot.MaxFiles)
	}
}
