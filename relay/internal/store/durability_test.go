package store

import (
	"context"
	"path/filepath"
	"testing"
)

// Every connection to an SQLite store commits with synchronous FULL, so
// that a committed enrolment or revocation survives a power loss (NORMAL,
// in WAL mode, loses the commits since the last checkpoint).
func TestSQLiteSynchronousFull(t *testing.T) {
	ctx := context.Background()
	st, err := Open(ctx, filepath.Join(t.TempDir(), "tether.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	// Several connections held at once are distinct: each ran the pragmas.
	for i := range 3 {
		c, err := st.db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		var mode string
		if err := c.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
			t.Fatal(err)
		}
		var sync int
		if err := c.QueryRowContext(ctx, "PRAGMA synchronous").Scan(&sync); err != nil {
			t.Fatal(err)
		}
		if mode != "wal" || sync != 2 {
			t.Errorf("connection %d: journal_mode %s, synchronous %d; want wal, 2 (FULL)", i, mode, sync)
		}
	}
}
