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
	for range 2 {
		key, err := ReadLogKey(dir)
		switch {
		case err == nil:
			return key, false, nil
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
		// Made exclusively: of two processes starting at once (an
		// update's trial beside the running agent), both end up with the
		// one key.
		path := filepath.Join(dir, LogKeyFile)
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, fs.ErrExist) {
			continue // the other one made it: read it
		}
		if err != nil {
			return nil, false, fmt.Errorf("access log key: %w", err)
		}
		_, werr := f.Write(pemBlock("PRIVATE KEY", der))
		serr := f.Sync()
		if err := errors.Join(werr, serr, f.Close()); err != nil {
			os.Remove(path)
			return nil, false, fmt.Errorf("access log key: write %s: %w", path, err)
		}
		syncDir(dir)
		return key, true, nil
	}
	return nil, false, fmt.Errorf("access log key: %s: made and gone again", filepath.Join(dir, LogKeyFile))
}
