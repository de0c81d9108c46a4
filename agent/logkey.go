package agent

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/tetherhq/tether/agent/accesslog"
)

// LogKeyFile holds, in the state directory, the access log's key: the
// ed25519 key that signs the log's checkpoints (package accesslog,
// keys.go), PKCS#8 in PEM, owner-only. The agent makes it at enrolment
// (or at its first start, when an earlier version enrolled it) and never
// sends it anywhere; no CA certifies it and renewals do not replace it,
// so that the vendor, who runs the CA, cannot sign the log. Enrolling
// again (--force) keeps it: the log goes on.
const LogKeyFile = "access-log.key"

// LogMarkFile holds, in the state directory, how far the access log's
// chain reached at its last checkpoint (accesslog.Options.Mark), kept
// apart from the log so that lines removed from its end are noticed.
const LogMarkFile = "access-log.mark"

// LogLostFile holds, in the state directory, the stops of the agent that
// could not write their records to the access log, how many each lost and
// why (accesslog.Options.StopLosses), until the next start writes them
// in the log as lost lines.
const LogLostFile = "access-log.lost"

// maxLogKeyFile bounds what is read of LogKeyFile.
const maxLogKeyFile = 4 << 10

// ReadLogKey reads the access log's key from the state directory dir.
// When there is none, the error wraps fs.ErrNotExist.
func ReadLogKey(dir string) (ed25519.PrivateKey, error) {
	path := filepath.Join(dir, LogKeyFile)
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxLogKeyFile+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(b) > maxLogKeyFile {
		return nil, fmt.Errorf("%s: longer than %d bytes: not an access log key", path, maxLogKeyFile)
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("%s: no PEM PRIVATE KEY block", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	key, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s: a %T, not an ed25519 key", path, k)
	}
	return key, nil
}

// LogKeyFingerprint is the fingerprint (accesslog.Fingerprint) of the
// access log's key in the state directory dir: what the tenant records
// to verify the log against (tether-agent access-log --verify --key).
func LogKeyFingerprint(dir string) (string, error) {
	key, err := ReadLogKey(dir)
	if err != nil {
		return "", err
	}
	return accesslog.Fingerprint(key.Public().(ed25519.PublicKey)), nil
}

// loadOrMakeLogKey reads the access log's key from dir, making it when
// there is none; made says that it was made now. A key that does not
// read is an error, never replaced: a new key breaks the log's chain of
// keys, which only the tenant should decide.
func loadOrMakeLogKey(dir string) (key ed25519.PrivateKey, made bool, err error) {
	for range 3 {
		key, err := ReadLogKey(dir)
		switch {
		case err == nil:
			return key, false, nil
		case emptyFile(filepath.Join(dir, LogKeyFile)):
			// Left empty by an earlier version killed (or a power loss)
			// between making the file and its bytes reaching the disk: the
			// key is lost. A new one is made rather than the agent never
			// starting again; if the lost key had signed lines of the log,
			// --verify reports the chain of keys broken where the new one
			// starts, as after a key file moved aside.
			if err := os.Remove(filepath.Join(dir, LogKeyFile)); err != nil {
				return nil, false, fmt.Errorf("access log key: %w", err)
			}
			continue
		case !errors.Is(err, fs.ErrNotExist):
			return nil, false, fmt.Errorf("access log key: %w (move the file aside and the agent makes a new key; --verify then reports the log's chain of keys broken where the new key starts)", err)
		}
		_, key, err = ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, false, err
		}
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, false, err
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, false, fmt.Errorf("access log key: %w", err)
		}
		// Written whole to a file of its own, then linked to its name,
		// which fails when the name exists: of two processes starting at
		// once (an update's trial beside the running agent), both end up
		// with the one key, and a crash or power loss at any moment leaves
		// either no key or a whole one under the name, never a file cut
		// short.
		path := filepath.Join(dir, LogKeyFile)
		tmp, err := os.CreateTemp(dir, "."+LogKeyFile+".*")
		if err != nil {
			return nil, false, fmt.Errorf("access log key: %w", err)
		}
		_, werr := tmp.Write(pemBlock("PRIVATE KEY", der))
		serr := tmp.Sync()
		if err := errors.Join(werr, serr, tmp.Close()); err != nil {
			os.Remove(tmp.Name())
			return nil, false, fmt.Errorf("access log key: write %s: %w", tmp.Name(), err)
		}
		err = os.Link(tmp.Name(), path)
		if err != nil && !errors.Is(err, fs.ErrExist) {
			// A file system without hard links: renamed into place when
			// nothing is there yet (two processes racing here are rare:
			// the one to rename last wins, and the other's key would only
			// sign until its restart).
			if _, serr := os.Lstat(path); errors.Is(serr, fs.ErrNotExist) {
				err = os.Rename(tmp.Name(), path)
			} else {
				err = fs.ErrExist
			}
		}
		os.Remove(tmp.Name())
		if errors.Is(err, fs.ErrExist) {
			continue // the other one made it: read it
		}
		if err != nil {
			return nil, false, fmt.Errorf("access log key: %w", err)
		}
		syncDir(dir)
		return key, true, nil
	}
	return nil, false, fmt.Errorf("access log key: %s: made and gone again", filepath.Join(dir, LogKeyFile))
}

// emptyFile reports whether path is a regular file of no bytes.
func emptyFile(path string) bool {
	fi, err := os.Lstat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Size() == 0
}
