package installer

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/kardianos/service"
)

// Options says what to install.
type Options struct {
	// Layout is where the agent goes. The zero value takes DefaultLayout().
	Layout Layout
	// SourceBinary is the agent executable to copy to Layout.BinaryPath.
	// Empty: the running executable.
	SourceBinary string
	// SourceConfig is the config file to copy to Layout.ConfigPath (nothing
	// is copied when they are the same file). Required.
	SourceConfig string
	// FilesOnly lays out the files and permissions without creating the
	// user or registering the service (for packaging and tests).
	FilesOnly bool
	// Out receives a line per step; nil discards them.
	Out io.Writer
}

func (o *Options) setDefaults() error {
	if o.Layout == (Layout{}) {
		o.Layout = DefaultLayout()
	}
	if o.Layout.Name == "" {
		o.Layout.Name = DefaultName
	}
	if o.SourceBinary == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find the running executable: %w", err)
		}
		o.SourceBinary = exe
	}
	if o.SourceConfig == "" {
		return errors.New("install needs --config FILE")
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	return nil
}

// Install copies the binary and the config into place, creates the
// directories with their owners and permissions, and (unless FilesOnly)
// creates the service account where the OS needs one and registers the
// service to start at boot. It does not start the service.
func Install(o Options) error {
	if err := o.setDefaults(); err != nil {
		return err
	}
	return install(o)
}

// newService is the kardianos/service handle for layout l, with p as the
// program for the run mode (nil for the control commands).
func newService(l Layout, p service.Interface) (service.Service, error) {
	cfg, err := serviceConfig(l)
	if err != nil {
		return nil, err
	}
	return service.New(p, cfg)
}

// Uninstall stops the service and removes its registration. With purge it
// also removes the state (the agent's identity), the config, the binary
// and, on Linux, the service user. removeState, when not nil, removes the
// state directory in place of os.RemoveAll, after the service has
// stopped and before anything else is removed; when it refuses (an agent
// started by hand holds the directory, which would lose its identity
// while it runs) nothing is removed.
func Uninstall(l Layout, purge bool, out io.Writer, removeState func() error) error {
	s, err := newService(l, nil)
	if err != nil {
		return err
	}
	if st, err := s.Status(); err == nil && st == service.StatusRunning {
		if err := s.Stop(); err != nil {
			return fmt.Errorf("stop service: %w", err)
		}
	}
	if err := s.Uninstall(); err != nil && !errors.Is(err, service.ErrNotInstalled) {
		return fmt.Errorf("remove service: %w", err)
	}
	fmt.Fprintf(out, "service %s removed\n", l.Name)
	if !purge {
		fmt.Fprintf(out, "kept %s, %s and %s (uninstall --purge removes them)\n", l.BinaryPath, l.ConfigPath, l.StateDir)
		return nil
	}
	if removeState == nil {
		removeState = func() error { return os.RemoveAll(l.StateDir) }
	}
	if err := removeState(); err != nil {
		return fmt.Errorf("service %s removed, but not purging: %w", l.Name, err)
	}
	fmt.Fprintf(out, "removed %s\n", l.StateDir)
	for _, p := range []string{l.ConfigDir(), l.BinDir()} {
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("remove %s: %w", p, err)
		}
		fmt.Fprintf(out, "removed %s\n", p)
	}
	return purgeAccount(l, out)
}

// Start starts the installed service.
func Start(l Layout) error { return control(l, service.Service.Start) }

// Stop stops the service; the agent drains its tunnels first.
func Stop(l Layout) error { return control(l, service.Service.Stop) }

func control(l Layout, fn func(service.Service) error) error {
	s, err := newService(l, nil)
	if err != nil {
		return err
	}
	return fn(s)
}

// register registers the service l describes with the service manager.
func register(l Layout) error {
	s, err := newService(l, nil)
	if err != nil {
		return err
	}
	if err := s.Install(); err != nil {
		return fmt.Errorf("register service: %w", err)
	}
	return nil
}

// Status is "running", "stopped" or "not installed".
func Status(l Layout) (string, error) {
	s, err := newService(l, nil)
	if err != nil {
		return "", err
	}
	st, err := s.Status()
	switch {
	case errors.Is(err, service.ErrNotInstalled):
		return "not installed", nil
	case err != nil:
		return "", managerError(err, statusCommand(l.Name))
	case st == service.StatusRunning:
		return "running", nil
	case st == service.StatusStopped:
		return "stopped", nil
	}
	return "unknown", nil
}

// managerError is err, a failure of the service manager's status
// command argv, with what that command says when run again:
// kardianos/service keeps only its exit status ("exit status 1"), which
// does not tell a service that is not installed from a service manager
// that cannot run (systemd not being PID 1, in a container).
func managerError(err error, argv []string) error {
	var exit *exec.ExitError
	if len(argv) == 0 || !errors.As(err, &exit) {
		return err
	}
	out, _ := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	msg := strings.Join(strings.Fields(strings.ToValidUTF8(string(out), "?")), " ")
	if len(msg) > 500 {
		msg = msg[:500] + "…"
	}
	if msg == "" {
		return fmt.Errorf("%q failed (%w) without saying why", strings.Join(argv, " "), err)
	}
	return fmt.Errorf("%q failed (%w): %s", strings.Join(argv, " "), err, msg)
}

// copyFile copies src to dst through a temporary file in dst's directory
// and a rename, so dst is never half written.
func copyFile(src, dst string, mode os.FileMode) error {
	if same(src, dst) {
		return os.Chmod(dst, mode)
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after the rename, fails harmlessly
	if _, err := io.Copy(tmp, in); err != nil {
		tmp.Close()
		return fmt.Errorf("copy %s: %w", src, err)
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), dst)
}

func same(a, b string) bool {
	fa, err1 := os.Stat(a)
	fb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(fa, fb)
}
