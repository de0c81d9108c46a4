package agent

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// configHashKeyFile holds the agent's secret key for config hashes: 32
// random bytes, hex, made the first time the agent runs.
const configHashKeyFile = "config-hash.key"

// ConfigHash identifies a service configuration: the hex HMAC-SHA256,
// under key (the agent's own secret, configHashKeyFile), of its canonical
// form, JSON with the services sorted by name, each with its address and
// its sorted backend patterns. Two files that allow the same services hash
// alike whatever their layout, order or comments; the relay, which sees
// the hash and the service names but not the key, cannot test guesses of
// the services' internal addresses against it, as it could an unkeyed hash.
func ConfigHash(key []byte, services map[string]Service) string {
	type canon struct {
		Address  string   `json:"address"`
		Backends []string `json:"backends"`
	}
	c := make(map[string]canon, len(services)) // encoding/json sorts map keys
	for name, s := range services {
		b := slices.Clone(s.Backends)
		if b == nil {
			b = []string{}
		}
		slices.Sort(b)
		c[name] = canon{Address: s.Address, Backends: b}
	}
	raw, _ := json.Marshal(c) // strings and slices only: cannot fail
	m := hmac.New(sha256.New, key)
	m.Write(raw)
	return hex.EncodeToString(m.Sum(nil))
}

// loadConfigHashKey reads the agent's config hash key from its state
// directory, making it when there is none (or a broken one). When it can
// be neither read nor written (a read-only state directory), the agent
// uses a key of its own for this run: the hash then changes at each start.
func loadConfigHashKey(dir string, log *slog.Logger) []byte {
	key, err := readOrMakeConfigHashKey(filepath.Join(dir, configHashKeyFile))
	if err != nil {
		log.Warn("config hash key: using a key for this run only (the config hash the relay sees changes at each start)", "err", err)
		key = make([]byte, sha256.Size)
		rand.Read(key)
	}
	return key
}

func readOrMakeConfigHashKey(path string) ([]byte, error) {
	for range 2 {
		key, err := ReadConfigHashKey(filepath.Dir(path))
		switch {
		case err == nil:
			return key, nil
		case errors.Is(err, errBadConfigHashKey):
			// Cut short by a crash, or edited: a new key (the hash changes once).
			key := make([]byte, sha256.Size)
			rand.Read(key)
			if err := writeFileAtomic(path, []byte(hex.EncodeToString(key)+"\n")); err != nil {
				return nil, fmt.Errorf("replace %s: %w", path, err)
			}
			return key, nil
		case !errors.Is(err, fs.ErrNotExist):
			return nil, err
		}
		// Made exclusively: of two processes starting at once (an update's
		// trial beside the running agent), both end up with the one key.
		key = make([]byte, sha256.Size)
		rand.Read(key)
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, fs.ErrExist) {
			continue // the other one made it: read it
		}
		if err != nil {
			return nil, err
		}
		_, werr := f.Write([]byte(hex.EncodeToString(key) + "\n"))
		serr := f.Sync()
		if err := errors.Join(werr, serr, f.Close()); err != nil {
			os.Remove(path)
			return nil, err
		}
		return key, nil
	}
	return nil, fmt.Errorf("%s: made and gone again", path)
}

// ReadConfigHashKey reads the config hash key of the agent whose state
// directory is dir (made at its first start), so that the tenant, on its
// own machine, can compute the hash its agent reports: ConfigHash(key,
// services).
func ReadConfigHashKey(dir string) ([]byte, error) {
	b, err := os.ReadFile(filepath.Join(dir, configHashKeyFile))
	if err != nil {
		return nil, err
	}
	key, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(key) != sha256.Size {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, configHashKeyFile), errBadConfigHashKey)
	}
	return key, nil
}

var errBadConfigHashKey = fmt.Errorf("not %d hex digits", 2*sha256.Size)
