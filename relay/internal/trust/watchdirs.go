package trust

import (
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"

	"github.com/fsnotify/fsnotify"
)

// maxLinks bounds the symbolic links followed from one file (Linux's
// limit).
const maxLinks = 40

// WatchedDirs keeps a file watcher on the directories that decide what a
// set of files reads: each file's own directory, and the directory of
// every symbolic link on the way to the file. So a file written in place,
// a new file renamed over it, a link swapped to a new target (as
// Kubernetes updates ConfigMap and Secret volumes) and a link's target
// edited in another directory all make events. Sync again after events,
// before reading the files: a swapped link may lead elsewhere now.
type WatchedDirs struct {
	w      *fsnotify.Watcher
	log    *slog.Logger
	what   string          // what is watched, for the log
	dirs   map[string]bool // directories watched
	failed map[string]bool // directories that could not be watched (logged once)
}

// NewWatchedDirs returns an empty set on w; what names the files in logs.
func NewWatchedDirs(w *fsnotify.Watcher, log *slog.Logger, what string) *WatchedDirs {
	return &WatchedDirs{w: w, log: log, what: what, dirs: map[string]bool{}, failed: map[string]bool{}}
}

// Sync watches the directories that decide what paths read, and stops
// watching those that no longer do (after a link swap, the old target's
// directory). A directory removed and made again is watched again. It
// reports whether every directory wanted is watched.
func (d *WatchedDirs) Sync(paths ...string) bool {
	want := map[string]bool{}
	for _, p := range paths {
		for _, dir := range LinkDirs(p) {
			want[dir] = true
		}
	}
	have := d.w.WatchList()
	for dir := range d.dirs {
		if !want[dir] {
			if slices.Contains(have, dir) {
				d.w.Remove(dir) // an error means the directory is gone, and so is its watch
			}
			delete(d.dirs, dir)
		}
	}
	ok := true
	for dir := range want {
		if d.dirs[dir] && slices.Contains(have, dir) {
			continue
		}
		if err := d.w.Add(dir); err != nil {
			if !d.failed[dir] {
				d.log.Warn("cannot watch a directory for changes to "+d.what, "dir", dir, "err", err)
			}
			d.failed[dir] = true
			delete(d.dirs, dir)
			ok = false
			continue
		}
		delete(d.failed, dir)
		d.dirs[dir] = true
	}
	for dir := range d.failed {
		if !want[dir] {
			delete(d.failed, dir)
		}
	}
	return ok
}

// LinkDirs returns the directories whose entries decide what path reads:
// its own, and that of each symbolic link met on the way to the file.
// Each is given absolute, with its own links resolved, so that one
// directory is watched under one name.
func LinkDirs(path string) []string {
	var dirs []string
	p := path
	if abs, err := filepath.Abs(p); err == nil {
		p = abs
	}
	for range maxLinks {
		dir := filepath.Dir(p)
		if r, err := filepath.EvalSymlinks(dir); err == nil {
			dir = r
		}
		if !slices.Contains(dirs, dir) {
			dirs = append(dirs, dir)
		}
		fi, err := os.Lstat(p)
		if err != nil || fi.Mode()&fs.ModeSymlink == 0 {
			break
		}
		target, err := os.Readlink(p)
		if err != nil {
			break
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(dir, target) // relative to the link's real directory
		}
		p = filepath.Clean(target)
	}
	return dirs
}
