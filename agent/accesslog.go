package agent

import (
	"crypto/ed25519"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"
	quicgo "github.com/quic-go/quic-go"
	"go.yaml.in/yaml/v3"

	"github.com/tetherhq/tether/agent/accesslog"
	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/protocol/transport"
)

// AccessLogConfig configures the access log: the tenant's own record of
// every stream the agent served or refused, in a hash chain with signed
// checkpoints (package accesslog). It is on unless Disabled.
type AccessLogConfig struct {
	// Disabled turns the access log off.
	Disabled bool `yaml:"disabled"`
	// Path is the file written now; rotated files are kept beside it.
	// Default STATE_DIR/access-log/access.log.
	Path string `yaml:"path"`
	// MaxSize is the size at which the file is rotated. Default 10 MiB.
	MaxSize ByteSize `yaml:"max_size"`
	// MaxFiles is how many files are kept, the current one included; the
	// oldest rotated files beyond it are deleted. Default 10.
	MaxFiles int `yaml:"max_files"`
	// CheckpointInterval is how often a signed checkpoint is written while
	// lines are written. Default 1m.
	CheckpointInterval time.Duration `yaml:"checkpoint_interval"`
	// Required refuses new streams (code unavailable) while the log cannot
	// be written, instead of serving streams it cannot record.
	Required bool `yaml:"required"`
	// KeyRotation is how often the agent replaces the log key, and
	// destroys the old one, so that whoever later gets the machine can
	// rewrite at most the lines written since the last replacement
	// (accesslog/rotatekey.go). Default 24h; "off": never.
	KeyRotation KeyRotation `yaml:"key_rotation"`
}

// KeyRotation is access_log.key_rotation: a duration, or off.
type KeyRotation time.Duration

// KeyRotationOff is KeyRotation "off".
const KeyRotationOff = KeyRotation(-1)

// DefaultKeyRotation is access_log.key_rotation's default.
const DefaultKeyRotation = KeyRotation(24 * time.Hour)

// Bounds of access_log.key_rotation.
const (
	minKeyRotation = KeyRotation(time.Minute)
	maxKeyRotation = KeyRotation(366 * 24 * time.Hour)
)

// UnmarshalYAML accepts a duration (24h, 168h) or off.
func (k *KeyRotation) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: key_rotation is a duration (24h) or off", n.Line)
	}
	if v := strings.TrimSpace(n.Value); v == "off" || v == "false" {
		*k = KeyRotationOff
		return nil
	}
	d, err := time.ParseDuration(strings.TrimSpace(n.Value))
	if err != nil {
		return fmt.Errorf("line %d: key_rotation %q: want a duration (24h) or off", n.Line, clipText(n.Value))
	}
	if d <= 0 {
		return fmt.Errorf("line %d: key_rotation %q: want a positive duration, or off", n.Line, clipText(n.Value))
	}
	*k = KeyRotation(d)
	return nil
}

// Interval is how often the key is replaced; 0: never.
func (k KeyRotation) Interval() time.Duration {
	switch {
	case k < 0:
		return 0
	case k == 0:
		return time.Duration(DefaultKeyRotation)
	}
	return time.Duration(k)
}

// String is the setting as the config writes it.
func (k KeyRotation) String() string {
	if k < 0 {
		return "off"
	}
	return time.Duration(k).String()
}

// Bounds of the access log settings.
const (
	minAccessLogSize     = 1 << 10
	maxAccessLogSize     = 1 << 40
	maxAccessLogFiles    = 10000
	minCheckpointEvery   = time.Second
	defaultAccessLogDir  = "access-log"
	defaultAccessLogFile = "access.log"
)

func (c *AccessLogConfig) validate() error {
	var errs []error
	if c.Disabled && c.Required {
		errs = append(errs, errors.New("access_log: required and disabled contradict each other"))
	}
	if c.MaxSize != 0 && (c.MaxSize < minAccessLogSize || c.MaxSize > maxAccessLogSize) {
		errs = append(errs, fmt.Errorf("access_log.max_size %d: want 1KiB to 1TiB", c.MaxSize))
	}
	if c.MaxFiles != 0 && (c.MaxFiles < 2 || c.MaxFiles > maxAccessLogFiles) {
		errs = append(errs, fmt.Errorf("access_log.max_files %d: want 2 to %d (the current file and at least one rotated)", c.MaxFiles, maxAccessLogFiles))
	}
	if c.KeyRotation > 0 && (c.KeyRotation < minKeyRotation || c.KeyRotation > maxKeyRotation) {
		errs = append(errs, fmt.Errorf("access_log.key_rotation %v: want %v to %v, or off", time.Duration(c.KeyRotation), time.Duration(minKeyRotation), time.Duration(maxKeyRotation)))
	}
	if c.KeyRotation < 0 && c.KeyRotation != KeyRotationOff {
		errs = append(errs, fmt.Errorf("access_log.key_rotation %v: want a positive duration, or off", time.Duration(c.KeyRotation)))
	}
	if c.CheckpointInterval != 0 && c.CheckpointInterval < minCheckpointEvery {
		errs = append(errs, fmt.Errorf("access_log.checkpoint_interval %v: want at least %v", c.CheckpointInterval, minCheckpointEvery))
	}
	return errors.Join(errs...)
}

// AccessLogPath is the file the agent of cfg writes its access log to.
func (c *Config) AccessLogPath() string {
	if c.AccessLog.Path != "" {
		return c.AccessLog.Path
	}
	return filepath.Join(c.StateDir, defaultAccessLogDir, defaultAccessLogFile)
}

// ByteSize is a size in bytes; in YAML a number of bytes or a number with
// a unit: KiB, MiB, GiB (powers of 1024) or KB, MB, GB (of 1000).
type ByteSize int64

// UnmarshalYAML accepts 10485760, 10MiB, "10 MiB", 10MB.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: a size is a number of bytes or a number with a unit (KiB, MiB, GiB)", n.Line)
	}
	v, err := ParseByteSize(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*b = v
	return nil
}

// ParseByteSize parses a size: a number of bytes, or a number followed by
// KiB, MiB, GiB, KB, MB or GB.
func ParseByteSize(s string) (ByteSize, error) {
	s = strings.TrimSpace(s)
	i := strings.IndexFunc(s, func(r rune) bool { return r < '0' || r > '9' })
	num, unit := s, ""
	if i >= 0 {
		num, unit = s[:i], strings.TrimSpace(s[i:])
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("size %q: want a number of bytes or a number with a unit (KiB, MiB, GiB)", s)
	}
	mult := map[string]int64{"": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "KB": 1e3, "MB": 1e6, "GB": 1e9}[unit]
	if mult == 0 {
		return 0, fmt.Errorf("size %q: unknown unit %q (want KiB, MiB, GiB, KB, MB or GB)", s, unit)
	}
	if n > (1<<62)/mult {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return ByteSize(n * mult), nil
}

// newAccessLog builds the agent's access log from its config; nil when it
// is disabled, and for the trial of a new binary, which serves no streams
// of its own while the running agent holds the log.
func (a *Agent) newAccessLog() *accesslog.Log {
	c := a.cfg.AccessLog
	if c.Disabled || a.cfg.UpdateTrial != "" {
		return nil
	}
	id := identity.Agent{TrustDomain: a.state.TrustDomain, Tenant: a.state.Tenant, ID: a.state.AgentID}
	return accesslog.New(accesslog.Options{
		Path: a.cfg.AccessLogPath(), MaxSize: int64(c.MaxSize), MaxFiles: c.MaxFiles, CheckpointInterval: c.CheckpointInterval,
		Key: a.logKey, KeySince: a.logKeySince, KeyRotation: c.KeyRotation.Interval(), KeyRecord: filepath.Join(a.state.Dir, LogKeyRecordFile),
		NextKey:     func() (ed25519.PrivateKey, error) { return writeNextLogKey(a.state.Dir) },
		KeyReplaced: func(_, next ed25519.PrivateKey) error { return replaceLogKey(a.state.Dir, next) },
		AfterStep:   a.cfg.LogKeyStep,
		Mark:        filepath.Join(a.state.Dir, LogMarkFile), StopLosses: filepath.Join(a.state.Dir, LogLostFile), Agent: id.String(), Version: a.cfg.Version, Logger: a.log,
		Changed: a.rep.change,
	})
}

// accessLogError is why the access log cannot be written now, or "".
func (a *Agent) accessLogError() string {
	if a.alog == nil {
		return ""
	}
	if err := a.alog.Err(); err != nil {
		return err.Error()
	}
	return ""
}

// accessLogRefusal is the refusal of a new stream while the access log
// cannot be written and access_log.required is set; nil otherwise.
func (a *Agent) accessLogRefusal() *protocol.Error {
	if a.alog == nil || !a.cfg.AccessLog.Required {
		return nil
	}
	if err := a.alog.Err(); err != nil {
		return protocol.Errorf(protocol.CodeUnavailable, "tenant %q's agent refuses streams while its access log cannot be written (access_log: required): %v", a.state.Tenant, err)
	}
	return nil
}

// streamRecord starts the access-log record of a stream of session s
// with header h.
func streamRecord(s *session, h protocol.StreamHeader) accesslog.Record {
	return accesslog.Record{Request: h.RequestID, Backend: h.Backend, Service: h.Service, Relay: s.relay, Session: s.welcome.SessionID}
}

// logStream queues r, ended now after started, for the access log.
func (a *Agent) logStream(r accesslog.Record, started time.Time) {
	if a.alog == nil {
		return
	}
	r.Time = time.Now()
	r.Duration = r.Time.Sub(started)
	a.alog.Add(r)
}

// logOpen queues the open line of a stream accepted now, started when
// its header came.
func (a *Agent) logOpen(r accesslog.Record, started time.Time) {
	r.Opened = true
	a.logStream(r, started)
}

// logRefusal queues the record of a refused stream.
func (a *Agent) logRefusal(r accesslog.Record, started time.Time, e *protocol.Error) {
	r.Code, r.End, r.Message = e.Code.String(), accesslog.EndRefused, e.Message
	a.logStream(r, started)
}

// streamEnd says how a served stream ended, from what the splice returned.
func streamEnd(err error) string {
	var (
		se  *quicgo.StreamError      // a QUIC stream reset
		ae  *quicgo.ApplicationError // a QUIC connection closed
		ite *quicgo.IdleTimeoutError
		te  *quicgo.TransportError
	)
	switch {
	case err == nil:
		return accesslog.EndClosed
	case errors.Is(err, transport.ErrIdle):
		return accesslog.EndIdle
	case errors.Is(err, transport.ErrClosed), errors.Is(err, net.ErrClosed), errors.Is(err, io.EOF),
		errors.As(err, &ae), errors.As(err, &ite), errors.As(err, &te):
		return accesslog.EndCut
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, yamux.ErrConnectionReset), errors.As(err, &se):
		return accesslog.EndReset
	}
	return accesslog.EndError
}

// AccessLogVerifyOptions returns what verifying the access log of cfg's
// agent checks it against: the log key whose fingerprint is key (as the
// tenant recorded it; default the first key of the key record in the
// state directory, LogKeyRecordFile, else its key, LogKeyFile), the key
// record that links it to the keys after it, the agent's identity from its state directory and the CA
// roots in rootsFile (default the state directory's ca.crt, which holds
// two roots during a CA rotation), for the checkpoints of earlier
// versions. Without a state directory, key and rootsFile, the chain of
// keys starts from the first key the log names, and certificate-signed
// checkpoints are checked against their own certificates only.
func AccessLogVerifyOptions(cfg Config, rootsFile, key string) (accesslog.VerifyOptions, error) {
	o := accesslog.VerifyOptions{Path: cfg.AccessLogPath()}
	if cfg.StateDir != "" {
		o.Mark = filepath.Join(cfg.StateDir, LogMarkFile)
		o.StopLosses = filepath.Join(cfg.StateDir, LogLostFile)
		o.KeyRecord = filepath.Join(cfg.StateDir, LogKeyRecordFile)
	}
	switch {
	case key != "":
		fp, err := accesslog.ParseFingerprint(key)
		if err != nil {
			return o, err
		}
		o.Key = fp
	case cfg.StateDir != "":
		// The first key of the key record: the agent's first log key,
		// which the chain starts from after rotations (the key in force
		// signs only the lines since the last one).
		if links, err := accesslog.ReadKeyRecord(o.KeyRecord); err == nil && len(links) > 0 {
			o.Key = links[0].Fingerprint
			break
		}
		fp, err := LogKeyFingerprint(cfg.StateDir)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return o, fmt.Errorf("access log key: %w", err)
		}
		o.Key = fp
	}
	td := ""
	raw, err := os.ReadFile(filepath.Join(cfg.StateDir, identityFile))
	switch {
	case err == nil:
		var id identityJSON
		if err := json.Unmarshal(raw, &id); err != nil {
			return o, fmt.Errorf("parse %s: %w", filepath.Join(cfg.StateDir, identityFile), err)
		}
		o.Agent, td = identity.Agent{TrustDomain: id.TrustDomain, Tenant: id.Tenant, ID: id.AgentID}.String(), id.TrustDomain
		if rootsFile == "" {
			rootsFile = filepath.Join(cfg.StateDir, caFile)
		}
	case !errors.Is(err, fs.ErrNotExist):
		return o, fmt.Errorf("read agent identity: %w", err)
	}
	if rootsFile == "" {
		return o, nil
	}
	pemData, err := os.ReadFile(rootsFile)
	if err != nil {
		return o, fmt.Errorf("read CA roots: %w", err)
	}
	if td != "" {
		_, o.Roots, err = parseRoots(pemData, td)
	} else if o.Roots = x509.NewCertPool(); !o.Roots.AppendCertsFromPEM(pemData) {
		err = errors.New("no certificate")
	}
	if err != nil {
		return o, fmt.Errorf("%s: %w", rootsFile, err)
	}
	return o, nil
}
