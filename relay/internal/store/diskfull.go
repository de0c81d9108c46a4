package store

import (
	"errors"
	"path/filepath"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// ErrDiskFull is wrapped by the error of Open when SQLite failed because
// the file system holding the database is full.
var ErrDiskFull = errors.New("the file system holding the store is full")

// fullBelow is the space available under which an I/O error of SQLite
// is taken for a full file system: SQLite grows its files (the WAL, the
// shared-memory index, by 32 KiB) by far less than this.
const fullBelow = 1 << 20

// diskFull reports whether err, from SQLite on the database file at
// path, comes from a full file system, and the bytes available there
// (-1 when unknown): SQLITE_FULL, or an I/O error (SQLITE_IOERR_SHMSIZE
// as the shared-memory index cannot grow, SQLITE_IOERR_WRITE, …; SQLite
// does not say why a write failed) or a file it could not open while
// less than fullBelow is available to the relay's user.
func diskFull(path string, err error) (bool, int64) {
	var se *sqlite.Error
	if !errors.As(err, &se) {
		return false, -1
	}
	avail := availableBytes(filepath.Dir(path))
	switch se.Code() & 0xff {
	case sqlite3.SQLITE_FULL:
		return true, avail
	case sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN:
		return avail >= 0 && avail < fullBelow, avail
	}
	return false, avail
}
