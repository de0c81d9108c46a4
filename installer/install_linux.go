package installer

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"

	"github.com/kardianos/service"
)

// DefaultLayout is LinuxLayout("").
func DefaultLayout() Layout { return LinuxLayout("") }

func serviceConfig(l Layout) (*service.Config, error) {
	unit, err := SystemdUnit(l)
	if err != nil {
		return nil, err
	}
	return &service.Config{
		Name:        l.Name,
		DisplayName: "Tether agent",
		Description: "Tether agent (outbound tunnel to the Tether relay)",
		Executable:  l.BinaryPath,
		Arguments:   l.ServiceArgs(),
		UserName:    l.Name,
		// The whole unit is ours; it has no template actions, so
		// kardianos/service writes it as it is.
		Option: service.KeyValue{"SystemdScript": unit},
	}, nil
}

// owner is the service user's uid and gid, or -1s when files stay with the
// installing user (FilesOnly without the account).
type owner struct{ uid, gid int }

func install(o Options) error {
	l := o.Layout
	if _, err := SystemdUnit(l); err != nil {
		return err
	}
	if !o.FilesOnly {
		if os.Geteuid() != 0 {
			return errors.New("install must run as root (sudo tether-agent install …)")
		}
		if service.ChosenSystem() == nil || service.ChosenSystem().String() != "linux-systemd" {
			return errors.New("systemd is not running on this machine: the agent service needs systemd (run tether-agent run --config FILE under your own supervisor instead)")
		}
		if err := ensureUser(l, o.Out); err != nil {
			return err
		}
	}
	own := owner{-1, -1}
	if u, err := user.Lookup(l.Name); err == nil && os.Geteuid() == 0 {
		own.uid, _ = strconv.Atoi(u.Uid)
		own.gid, _ = strconv.Atoi(u.Gid)
	}

	// Binary: root-owned file in a directory the service may write (a
	// self-update renames the new binary over it).
	if err := mkdir(l.BinDir(), 0o755, own.uid, own.gid); err != nil {
		return err
	}
	if err := copyFile(o.SourceBinary, l.BinaryPath, 0o755); err != nil {
		return fmt.Errorf("install binary: %w", err)
	}
	fmt.Fprintf(o.Out, "installed %s\n", l.BinaryPath)

	// Config: root-owned, readable by the service's group only.
	if err := mkdir(l.ConfigDir(), 0o750, -1, own.gid); err != nil {
		return err
	}
	if err := copyFile(o.SourceConfig, l.ConfigPath, 0o640); err != nil {
		return fmt.Errorf("install config: %w", err)
	}
	if err := chown(l.ConfigPath, -1, own.gid); err != nil {
		return err
	}
	fmt.Fprintf(o.Out, "installed %s\n", l.ConfigPath)

	// State: the service's alone. Enrolment ran as root, so hand over
	// what it wrote.
	if err := mkdir(l.StateDir, 0o700, own.uid, own.gid); err != nil {
		return err
	}
	if err := mkdir(l.UpdateDir, 0o700, own.uid, own.gid); err != nil {
		return err
	}
	if own.uid >= 0 {
		if err := filepath.WalkDir(l.StateDir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			return os.Lchown(p, own.uid, own.gid)
		}); err != nil {
			return fmt.Errorf("hand %s to %s: %w", l.StateDir, l.Name, err)
		}
	}
	fmt.Fprintf(o.Out, "state directory %s\n", l.StateDir)
	if o.FilesOnly {
		return nil
	}

	if err := register(l); err != nil {
		return err
	}
	fmt.Fprintf(o.Out, "installed and enabled /etc/systemd/system/%s.service (start it with tether-agent start)\n", l.Name)
	return nil
}

// mkdir creates dir (and parents) and sets its mode and owner (-1 keeps
// the current one).
func mkdir(dir string, mode os.FileMode, uid, gid int) error {
	if err := os.MkdirAll(dir, mode); err != nil {
		return err
	}
	if err := os.Chmod(dir, mode); err != nil {
		return err
	}
	return chown(dir, uid, gid)
}

func chown(p string, uid, gid int) error {
	if uid < 0 && gid < 0 {
		return nil
	}
	return os.Lchown(p, uid, gid)
}

// ensureUser creates the system user and group l.Name when missing: no
// login shell, no home directory of its own (its home is the state
// directory).
func ensureUser(l Layout, out io.Writer) error {
	if _, err := user.Lookup(l.Name); err == nil {
		return nil
	}
	shell := "/usr/sbin/nologin"
	if _, err := os.Stat(shell); err != nil {
		shell = "/sbin/nologin"
	}
	cmd := exec.Command("useradd", "--system", "--user-group", "--no-create-home",
		"--home-dir", l.StateDir, "--shell", shell, "--comment", "Tether agent", l.Name)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("create user %s: %v: %s", l.Name, err, b)
	}
	fmt.Fprintf(out, "created system user %s\n", l.Name)
	return nil
}

func purgeAccount(l Layout, out io.Writer) error {
	if _, err := user.Lookup(l.Name); err != nil {
		return nil
	}
	if b, err := exec.Command("userdel", l.Name).CombinedOutput(); err != nil {
		return fmt.Errorf("remove user %s: %v: %s", l.Name, err, b)
	}
	fmt.Fprintf(out, "removed user %s\n", l.Name)
	return nil
}

// statusCommand is the command with which the service manager that
// kardianos/service chose answers for the service's state.
func statusCommand(name string) []string {
	sys := service.ChosenSystem()
	if sys == nil {
		return nil
	}
	switch sys.String() {
	case "linux-systemd":
		return []string{"systemctl", "is-active", name + ".service"}
	case "linux-upstart":
		return []string{"initctl", "status", name}
	case "linux-openrc":
		return []string{"rc-service", name, "status"}
	case "unix-systemv":
		return []string{"service", name, "status"}
	}
	return nil
}
