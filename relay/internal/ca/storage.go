package ca

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/tetherhq/tether/relay/internal/atomicfile"
)

// Storage is where a CA's files are kept: each root's certificate and
// private key, and the manifest of roots (roots.json). A relay's data
// directory keeps them in a directory (Dir); a cluster of relays keeps
// them in the store they share (StoreFiles), the keys sealed.
//
// Files whose names end in ".key" hold private keys: a Storage keeps them
// from anyone but the relay (owner-only files; sealed rows).
type Storage interface {
	// ReadFile returns the content of name, or an error wrapping
	// fs.ErrNotExist when there is no such file.
	ReadFile(ctx context.Context, name string) ([]byte, error)
	// WriteFile replaces name with data at once: a reader sees the old
	// content or the new, never a part.
	WriteFile(ctx context.Context, name string, data []byte) error
	// Remove deletes name; a file that does not exist is not an error.
	Remove(ctx context.Context, name string) error
}

// isKey reports whether the CA file name holds a private key.
func isKey(name string) bool { return strings.HasSuffix(name, ".key") }

// where names file name of s for an operator: its path, or its name and
// where it is kept.
func where(s Storage, name string) string {
	if d, ok := s.(Dir); ok {
		return filepath.Join(string(d), name)
	}
	return fmt.Sprintf("%s in %v", name, s)
}

// Dir is a CA kept in a directory, as a relay's data directory keeps it
// (DATA/ca): certificates and roots.json readable by all (0644), keys by
// their owner only (0600), each replaced by a rename. The directory is
// made (0700) at the first write.
type Dir string

// ReadFile reads the file name of the directory. A key readable by
// anyone but its owner is refused.
func (d Dir) ReadFile(_ context.Context, name string) ([]byte, error) {
	path := filepath.Join(string(d), name)
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if isKey(name) {
		fi, err := f.Stat()
		if err != nil {
			return nil, err
		}
		if perm := fi.Mode().Perm(); perm&0o077 != 0 {
			return nil, fmt.Errorf("CA key %s has permissions %v: it must be readable by its owner only (chmod 600)", path, perm)
		}
	}
	return io.ReadAll(f)
}

// WriteFile replaces the file name atomically and durably (atomicfile
// syncs the directory after the rename).
func (d Dir) WriteFile(_ context.Context, name string, data []byte) error {
	if err := os.MkdirAll(string(d), 0o700); err != nil {
		return fmt.Errorf("create CA directory: %w", err)
	}
	perm := os.FileMode(0o644)
	if isKey(name) {
		perm = 0o600
	}
	return atomicfile.Write(filepath.Join(string(d), name), data, perm)
}

// Remove deletes the file name.
func (d Dir) Remove(_ context.Context, name string) error {
	if err := os.Remove(filepath.Join(string(d), name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	d.sync()
	return nil
}

// sync makes renames and removals in the directory durable.
func (d Dir) sync() {
	if f, err := os.Open(string(d)); err == nil {
		f.Sync()
		f.Close()
	}
}
