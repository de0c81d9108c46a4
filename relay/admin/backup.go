package admin

import (
	"context"
	"errors"
	"path/filepath"
	"time"

	"github.com/tetherhq/tether/relay/internal/datadir"
)

// KindBackup: a backup of the data directory was written (Backup):
// detail has its path, id and when it was taken.
const KindBackup = "relay.backup"

// KindRestore: a relay started for the first time on a data directory
// restored from a backup and handled the step back (relay/internal/restore).
const KindRestore = "relay.restore"

// ErrSharedStore refuses a backup of a relay whose store is PostgreSQL:
// its message says what to do instead (pg_dump, and keep the CA's
// key-encryption key).
var ErrSharedStore = datadir.ErrSharedStore

// BackupManifest describes a backup (datadir.BackupManifest).
type BackupManifest = datadir.BackupManifest

// BackupFile is a file of a backup.
type BackupFile = datadir.BackupFile

// Backup writes a consistent backup of the data directory to dest, a new
// directory (force: or an earlier backup there, which it replaces), while
// a relay may serve on it (datadir.Dir.Backup). It holds the CA's private
// keys: it runs only where the data directory is, never through the
// admin API. The backup is audited.
func (a *Admin) Backup(ctx context.Context, dest string, force bool, version string) (BackupManifest, error) {
	if a.dir.CAShared() {
		return BackupManifest{}, ErrSharedStore
	}
	m, err := a.dir.Backup(ctx, dest, datadir.BackupOptions{Force: force, RelayVersion: version, Now: a.now})
	if err != nil {
		return m, err
	}
	if abs, err := filepath.Abs(dest); err == nil {
		dest = abs
	}
	a.Record(KindBackup, "", "", "", map[string]any{"path": dest, "backup": m.ID, "taken_at": m.TakenAt.Format(time.RFC3339Nano),
		"change_feed_at": m.Store.LatestChange})
	return m, nil
}

// VerifyBackup checks that the backup at dir can be restored
// (datadir.VerifyBackup). It changes nothing.
func VerifyBackup(ctx context.Context, dir string) (BackupManifest, error) {
	if dir == "" {
		return BackupManifest{}, errors.New("no backup given")
	}
	return datadir.VerifyBackup(ctx, dir)
}
