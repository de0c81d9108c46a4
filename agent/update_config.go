package agent

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/tetherhq/tether/protocol/release"
)

// Restart modes after an update (UpdateConfig.Restart).
const (
	RestartAuto = "auto" // exit when run by systemd ($INVOCATION_ID) or on Windows, else exec
	RestartExec = "exec" // replace this process with the new binary (foreground runs)
	RestartExit = "exit" // exit with ExitRestart and let the service manager start the new binary
)

// ExitRestart is the exit status with which the agent asks its service
// manager to start it again (after an update, or after rolling one back).
// It is EX_TEMPFAIL; systemd's Restart=on-failure restarts on it.
const ExitRestart = 75

// UpdateConfig configures self-update (the "update:" key).
type UpdateConfig struct {
	// PublicKeys are the release keys the agent trusts, each the contents
	// of a release.pub file, in addition to the keys built into the binary.
	// With no key at all, every update is refused. A relay cannot change
	// them: they come only from this file and the build.
	PublicKeys []string `yaml:"public_keys"`
	// Channel is the release channel the agent follows. Default "stable".
	Channel string `yaml:"channel"`
	// DownloadTimeout bounds the download of a release. Default 10m.
	DownloadTimeout time.Duration `yaml:"download_timeout"`
	// HealthTimeout is how long a new binary has to connect to a relay
	// before the previous binary is restored. Default 2m.
	HealthTimeout time.Duration `yaml:"health_timeout"`
	// Probation is how long a new binary must run, from each of its
	// starts, before its update is final: until then, a binary that
	// stopped without a clean exit (a crash, a kill) maxUncleanStops
	// times since it took over is replaced by the previous one, and its
	// version recorded as failed. Default 10m.
	Probation time.Duration `yaml:"probation"`
	// Restart is how the agent starts its new binary: auto (default),
	// exec or exit.
	Restart string `yaml:"restart"`
}

func (u *UpdateConfig) setDefaults() {
	if u.Channel == "" {
		u.Channel = release.DefaultChannel
	}
	if u.DownloadTimeout == 0 {
		u.DownloadTimeout = 10 * time.Minute
	}
	if u.HealthTimeout == 0 {
		u.HealthTimeout = 2 * time.Minute
	}
	if u.Probation == 0 {
		u.Probation = 10 * time.Minute
	}
	if u.Restart == "" {
		u.Restart = RestartAuto
	}
}

func (u *UpdateConfig) validate() error {
	var errs []error
	if _, err := release.ParseKeys(u.PublicKeys); err != nil {
		errs = append(errs, fmt.Errorf("update.public_keys: %w", err))
	}
	if u.Channel != "" && !validWord(u.Channel) {
		errs = append(errs, fmt.Errorf("update.channel %q: want lower-case letters, digits and hyphens", u.Channel))
	}
	if u.DownloadTimeout < 0 || u.HealthTimeout < 0 || u.Probation < 0 {
		errs = append(errs, errors.New("update.download_timeout, update.health_timeout and update.probation must not be negative"))
	}
	switch u.Restart {
	case "", RestartAuto, RestartExec, RestartExit:
	default:
		errs = append(errs, fmt.Errorf("update.restart %q: want auto, exec or exit", u.Restart))
	}
	return errors.Join(errs...)
}

func validWord(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// RestartError is returned by Run when the agent stopped to start another
// binary (an update, or the previous binary after a failed one). The
// command then calls Restart.
type RestartError struct {
	Mode string // RestartExec or RestartExit
	Path string // the binary to exec (its path when the agent started)
	Why  string
}

func (e *RestartError) Error() string { return "restart to " + e.Why }

// restartMode resolves auto.
func restartMode(mode string, getenv func(string) string, goos string) string {
	if mode != RestartAuto && mode != "" {
		return mode
	}
	if goos == "windows" || getenv("INVOCATION_ID") != "" {
		return RestartExit
	}
	return RestartExec
}

// Restart starts the agent's binary again as e asks: it replaces the
// process (exec) or exits with ExitRestart. It returns only on failure.
func Restart(e *RestartError) error {
	if e.Mode == RestartExit {
		os.Exit(ExitRestart)
	}
	return execSelf(e.Path)
}
