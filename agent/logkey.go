package agent

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/tetherhq/tether/agent/accesslog"
	"github.com/tetherhq/tether/protocol/identity"
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
	return readKeyFile(filepath.Join(dir, LogKeyFile))
}

// readKeyFile reads an access log key file.
func readKeyFile(path string) (ed25519.PrivateKey, error) {
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

// LogKeyNextFile holds, in the state directory, the access log's next
// key while the writer replaces the key (accesslog/rotatekey.go): made
// and stored before the log names it, renamed over LogKeyFile once the
// log and the key record do. A start that finds it finishes the
// rotation when the log names it, and removes it otherwise.
const LogKeyNextFile = "access-log.key.next"

// LogKeyRecordFile holds, in the state directory, the access log's key
// record (accesslog/keyrecord.go): every log key, each signed by the one
// before it, so that --verify links the first key (the tenant's pin) to
// the keys after it once the log files that introduced them are deleted.
const LogKeyRecordFile = "access-log.keys"

// logKeys is the access log's key as a start finds it.
type logKeys struct {
	key   ed25519.PrivateKey
	since time.Time // when it was put in force
	made  bool      // made now
}

// prepareLogKey reads (or makes) the access log's key in dir and brings
// the state directory to a state a rotation may start from: a rotation
// cut short by a crash is finished or undone (recoverNextKey), and the
// key record ends with the key in force. logPath is the access log.
func prepareLogKey(dir, logPath string, log *slog.Logger) (logKeys, error) {
	key, made, err := loadOrMakeLogKey(dir)
	if err != nil {
		return logKeys{}, err
	}
	lk := logKeys{key: key, made: made, since: time.Now().UTC()}
	if !made {
		if fi, err := os.Stat(filepath.Join(dir, LogKeyFile)); err == nil {
			lk.since = fi.ModTime().UTC()
		}
	}
	if err := recoverNextKey(dir, logPath, &lk, log); err != nil {
		return logKeys{}, err
	}
	record := filepath.Join(dir, LogKeyRecordFile)
	links, rerr := accesslog.ReadKeyRecord(record)
	pub := lk.key.Public().(ed25519.PublicKey)
	switch n := len(links); {
	case rerr == nil && n > 0 && links[n-1].Key.Equal(pub):
		lk.since = links[n-1].Time
		return lk, nil
	case rerr == nil && n == 0:
		// A key made now, or by a version that kept no record: the
		// record starts with it.
	default:
		why := "it does not end with the key in force"
		if rerr != nil {
			why = rerr.Error()
		}
		aside := fmt.Sprintf("%s.%s.broken", record, time.Now().UTC().Format("20060102T150405Z"))
		if err := os.Rename(record, aside); err != nil {
			return logKeys{}, fmt.Errorf("access log key record: %s, and it cannot be moved aside: %w", why, err)
		}
		log.Error("access log: the key record does not hold: moved aside, and a new one starts with the key in force; --verify from a key before it cannot link it once the log files that introduced it are deleted", "record", record, "moved_to", aside, "why", why, "key", accesslog.Fingerprint(pub))
	}
	if err := accesslog.AppendKeyRecord(record, lk.key, pub, 0, lk.since); err != nil {
		return logKeys{}, fmt.Errorf("access log key record: %w", err)
	}
	return lk, nil
}

// recoverNextKey finishes or undoes a rotation of the access log's key
// cut short (accesslog/rotatekey.go). The next key is stored before the
// log names it, and the old key is replaced only once the log and the
// key record name the next one: when the log's key in force is the next
// key, the record gets it (signed by the old key, still here) and it
// replaces the old key; otherwise the log never named it, and it goes.
func recoverNextKey(dir, logPath string, lk *logKeys, log *slog.Logger) error {
	if tmps, _ := filepath.Glob(filepath.Join(dir, "."+LogKeyNextFile+".*")); len(tmps) > 0 {
		for _, t := range tmps {
			os.Remove(t) // a next key cut short while written: never named anywhere
		}
	}
	nextPath := filepath.Join(dir, LogKeyNextFile)
	next, err := readKeyFile(nextPath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		// Written whole and synced before the log named it: this is not
		// what a crash leaves. Kept aside for whoever looks into it.
		aside := nextPath + ".broken"
		if rerr := os.Rename(nextPath, aside); rerr != nil {
			return fmt.Errorf("access log next key: %w, and it cannot be moved aside: %w", err, rerr)
		}
		log.Error("access log: the next log key does not read: moved aside; the key in force stays", "file", aside, "err", err)
		return nil
	}
	nextPub := next.Public().(ed25519.PublicKey)
	inForce, err := accesslog.KeyInForceAt(logPath)
	if err != nil {
		return fmt.Errorf("access log: a key rotation was cut short, and the log's key in force cannot be read to finish it: %w", err)
	}
	if inForce.Key == nil || !inForce.Key.Equal(nextPub) {
		if err := os.Remove(nextPath); err != nil {
			return fmt.Errorf("access log next key: %w", err)
		}
		syncDir(dir)
		log.Warn("access log: a key rotation was cut short before the log named the new key: the new key is removed, the key in force stays", "key", accesslog.Fingerprint(lk.key.Public().(ed25519.PublicKey)))
		return nil
	}
	record := filepath.Join(dir, LogKeyRecordFile)
	links, rerr := accesslog.ReadKeyRecord(record)
	if n := len(links); rerr != nil || n == 0 || !links[n-1].Key.Equal(nextPub) {
		if err := accesslog.AppendKeyRecord(record, lk.key, nextPub, inForce.Seq, inForce.Time); err != nil {
			// Not what a crash leaves (the record ends with the old key
			// until this append). The log names the new key: it stays
			// in force, and prepareLogKey starts a new record with it.
			log.Error("access log: a key rotation was cut short after the log named the new key, and the key record cannot take it", "record", record, "err", err)
		}
	}
	if err := os.Rename(nextPath, filepath.Join(dir, LogKeyFile)); err != nil {
		return fmt.Errorf("access log: finish a key rotation: %w", err)
	}
	syncDir(dir)
	log.Info("access log: finished a key rotation cut short: the new key replaced the old one, which is destroyed", "key", accesslog.Fingerprint(nextPub), "seq", inForce.Seq)
	clear(lk.key)
	lk.key, lk.since = next, inForce.Time
	return nil
}

// writeNextLogKey makes the access log's next key and stores it, whole
// and synced, as LogKeyNextFile in dir (accesslog.Options.NextKey).
func writeNextLogKey(dir string) (ed25519.PrivateKey, error) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, LogKeyNextFile)
	tmp, err := os.CreateTemp(dir, "."+LogKeyNextFile+".*")
	if err != nil {
		return nil, fmt.Errorf("next access log key: %w", err)
	}
	_, werr := tmp.Write(pemBlock("PRIVATE KEY", der))
	serr := tmp.Sync()
	if err := errors.Join(werr, serr, tmp.Close()); err != nil {
		os.Remove(tmp.Name())
		return nil, fmt.Errorf("next access log key: write %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return nil, fmt.Errorf("next access log key: %w", err)
	}
	syncDir(dir)
	return key, nil
}

// replaceLogKey puts the next key (LogKeyNextFile) in place of the
// access log's key in dir, which destroys the old one
// (accesslog.Options.KeyReplaced).
func replaceLogKey(dir string, next ed25519.PrivateKey) error {
	stored, err := readKeyFile(filepath.Join(dir, LogKeyNextFile))
	if err != nil {
		return fmt.Errorf("replace the access log key: %w", err)
	}
	if !stored.Equal(next) {
		return errors.New("replace the access log key: the stored next key is not the one the log names")
	}
	if err := os.Rename(filepath.Join(dir, LogKeyNextFile), filepath.Join(dir, LogKeyFile)); err != nil {
		return fmt.Errorf("replace the access log key: %w", err)
	}
	syncDir(dir)
	return nil
}

// RotateAccessLogKey replaces the access log's key of cfg's agent now,
// as the agent does every access_log.key_rotation
// (accesslog/rotatekey.go), while the agent is not running: it takes the
// state directory's lock (a running agent owns its log: the command is
// refused with the busy error naming it), finishes a rotation cut short,
// writes a start line, the key line of the new key signed by the old one
// and a stop checkpoint, and destroys the old key. It returns the
// fingerprints of the old and new keys.
func RotateAccessLogKey(cfg Config, command string) (old, next string, err error) {
	if cfg.AccessLog.Disabled {
		return "", "", errors.New("the access log is disabled (access_log.disabled): it has no key to replace")
	}
	lock, err := LockStateDir(cfg.StateDir, command)
	if err != nil {
		return "", "", err
	}
	defer lock.Release()
	// Who writes the start line: the agent's identity, when enrolled.
	var id identity.Agent
	if raw, err := os.ReadFile(filepath.Join(cfg.StateDir, identityFile)); err == nil {
		var j identityJSON
		if err := json.Unmarshal(raw, &j); err != nil {
			return "", "", fmt.Errorf("parse %s: %w", filepath.Join(cfg.StateDir, identityFile), err)
		}
		id = identity.Agent{TrustDomain: j.TrustDomain, Tenant: j.Tenant, ID: j.AgentID}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	lk, err := prepareLogKey(cfg.StateDir, cfg.AccessLogPath(), log)
	if err != nil {
		return "", "", err
	}
	old = accesslog.Fingerprint(lk.key.Public().(ed25519.PublicKey))
	c := cfg.AccessLog
	agentName := ""
	if id.ID != "" {
		agentName = id.String()
	}
	l := accesslog.New(accesslog.Options{
		Path: cfg.AccessLogPath(), MaxSize: int64(c.MaxSize), MaxFiles: c.MaxFiles,
		Key: lk.key, KeySince: lk.since, KeyRecord: filepath.Join(cfg.StateDir, LogKeyRecordFile),
		NextKey:     func() (ed25519.PrivateKey, error) { return writeNextLogKey(cfg.StateDir) },
		KeyReplaced: func(_, next ed25519.PrivateKey) error { return replaceLogKey(cfg.StateDir, next) },
		AfterStep:   cfg.LogKeyStep,
		Mark:        filepath.Join(cfg.StateDir, LogMarkFile), StopLosses: filepath.Join(cfg.StateDir, LogLostFile),
		Agent: agentName, Version: cfg.Version + " (" + command + ")", Logger: log,
	})
	l.Open()
	if err := l.Err(); err != nil {
		// Run would keep trying: this command stops instead.
		return old, "", err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.Run(ctx)
	}()
	rerr := l.RotateKey(done)
	cancel()
	<-done
	next, _ = l.KeyInForce()
	if rerr != nil {
		return old, next, rerr
	}
	if err := l.Err(); err != nil {
		return old, next, err
	}
	return old, next, nil
}
