package store

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tetherhq/tether/internal/fulldisk"
)

// Opening a store on a full file system says that it is full, rather than
// "disk I/O error (4874)" (SQLITE_IOERR_SHMSIZE: SQLite could not extend
// its shared-memory file).
func TestOpenFullDisk(t *testing.T) {
	dir := fulldisk.Dir(t, "4m")
	if dir == "" {
		return
	}
	ctx := context.Background()
	path := filepath.Join(dir, "tether.db")
	st, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	free := fulldisk.Fill(t, dir)
	defer free()
	st, err = Open(ctx, path)
	if err == nil {
		st.Close()
		t.Fatal("opened a store on a full file system")
	}
	t.Logf("Open on a full file system: %v", err)
	if !errors.Is(err, ErrDiskFull) || !strings.Contains(err.Error(), "file system") || !strings.Contains(err.Error(), "is full") {
		t.Errorf("Open on a full file system: %v; want ErrDiskFull, saying the file system is full", err)
	}
}
