package trust

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
)

// CertFile is a TLS certificate and key read from PEM files (the admin
// listener's --admin-cert and --admin-key) and read again whenever a file
// in their directories changes (WatchedDirs: the directories their
// symbolic links lead through too), so that a renewed certificate —
// written in place, renamed over the old one, swapped in by a symlink as
// Kubernetes does with secrets, or edited where a link points — is served
// from the next handshake on, without a restart and without dropping
// connections. A pair that does not load or
// has expired is logged and the previous one is kept.
type CertFile struct {
	certPath, keyPath string
	log               *slog.Logger
	now               func() time.Time

	cur     atomic.Pointer[tls.Certificate]
	loaded  atomic.Pointer[[]byte] // the PEM of cur, certificate then key
	reloads atomic.Int64           // certificates replaced since start (Reloads)
}

// ReloadSettle lets a burst of file events (write, rename, chmod) settle
// before the files are read.
const ReloadSettle = 200 * time.Millisecond

// LoadCertFile reads the pair; Watch keeps it current.
func LoadCertFile(certPath, keyPath string, log *slog.Logger, now func() time.Time) (*CertFile, error) {
	c := &CertFile{certPath: certPath, keyPath: keyPath, log: log, now: now}
	if _, err := c.load(); err != nil {
		return nil, err
	}
	return c, nil
}

// GetCertificate is the tls.Config callback.
func (c *CertFile) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return c.cur.Load(), nil
}

// load reads both files and, when they hold a different, valid and current
// pair, makes it the one served. It reports whether the pair changed.
func (c *CertFile) load() (bool, error) {
	certPEM, err := os.ReadFile(c.certPath)
	if err != nil {
		return false, fmt.Errorf("certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(c.keyPath)
	if err != nil {
		return false, fmt.Errorf("key: %w", err)
	}
	both := slices.Concat(certPEM, keyPEM)
	if old := c.loaded.Load(); old != nil && bytes.Equal(*old, both) {
		return false, nil
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return false, fmt.Errorf("certificate %s and key %s: %w", c.certPath, c.keyPath, err)
	}
	if now := c.now(); now.After(cert.Leaf.NotAfter) {
		return false, fmt.Errorf("certificate %s expired at %s", c.certPath, cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	c.cur.Store(&cert)
	c.loaded.Store(&both)
	return true, nil
}

// Watch reloads the pair after changes in the files' directories until
// ctx ends.
func (c *CertFile) Watch(ctx context.Context) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		c.log.Warn("cannot watch the admin certificate for changes; restart the relay to apply a new one", "err", err)
		return
	}
	defer w.Close()
	dirs := NewWatchedDirs(w, c.log, "the admin certificate")
	dirs.Sync(c.certPath, c.keyPath)
	settle := time.NewTimer(time.Hour)
	settle.Stop()
	defer settle.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-w.Events:
			if !ok {
				return
			}
			settle.Reset(ReloadSettle)
		case err, ok := <-w.Errors:
			if !ok {
				return
			}
			c.log.Warn("watching the admin certificate", "err", err)
			settle.Reset(ReloadSettle) // events may have been lost: read the files anyway
		case <-settle.C:
			dirs.Sync(c.certPath, c.keyPath)
			changed, err := c.load()
			switch {
			case err != nil:
				c.log.Error("admin certificate not reloaded; still serving the previous one", "err", err)
			case changed:
				c.reloads.Add(1)
				leaf := c.cur.Load().Leaf
				c.log.Info("admin certificate reloaded", "subject", leaf.Subject.String(), "not_after", leaf.NotAfter.UTC().Format(time.RFC3339))
			}
		}
	}
}

// Reloads is how many times the served pair was replaced since start.
func (c *CertFile) Reloads() int64 { return c.reloads.Load() }
