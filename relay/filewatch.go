package relay

import (
	"log/slog"

	"github.com/fsnotify/fsnotify"

	"github.com/tetherhq/tether/relay/internal/trust"
)

// WatchedDirs keeps a file watcher on the directories that decide what a
// set of files reads, symbolic links followed (see trust.WatchedDirs):
// the relay command's config file reloader uses it as the admin
// certificate's does.
type WatchedDirs = trust.WatchedDirs

// NewWatchedDirs returns an empty set on w; what names the files in logs.
func NewWatchedDirs(w *fsnotify.Watcher, log *slog.Logger, what string) *WatchedDirs {
	return trust.NewWatchedDirs(w, log, what)
}
