// Package installer installs the Tether agent as an operating-system service
// (systemd on Linux, the service control manager on Windows) with
// github.com/kardianos/service, and owns the per-OS paths and permissions.
//
// The decisions — paths, the systemd unit, the Windows image path and the
// security descriptors of the agent's directories — are portable functions,
// so they are tested on any OS; the glue that applies them lives in
// _linux.go and _windows.go files.
package installer

import (
	"errors"
	"fmt"
	"path"
	"path/filepath"
	"strings"
)

// DefaultName is the service name, and on Linux also the name of the
// service's system user and group.
const DefaultName = "tether-agent"

// Layout is where an installed agent lives. Paths are absolute and in the
// target OS's syntax.
type Layout struct {
	// Name is the service name (and on Linux the user and group).
	Name string
	// BinaryPath is the agent executable the service runs. Its directory
	// (BinDir) is writable by the service so that a self-update can
	// replace the binary.
	BinaryPath string
	// ConfigPath is the config file the service reads; it is never
	// writable by the service.
	ConfigPath string
	// StateDir holds the agent's key, certificates and CA roots; only the
	// service (and administrators) can read it.
	StateDir string
	// UpdateDir is where a self-update stages downloads before verifying
	// them; it is inside StateDir.
	UpdateDir string
}

// BinDir is the directory of the binary.
func (l Layout) BinDir() string { return dirOf(l.BinaryPath) }

// ConfigDir is the directory of the config file.
func (l Layout) ConfigDir() string { return dirOf(l.ConfigPath) }

func dirOf(p string) string {
	if strings.Contains(p, `\`) {
		i := strings.LastIndex(p, `\`)
		return p[:i]
	}
	return path.Dir(p)
}

// LinuxLayout is the layout on Linux under root ("" or "/" for the real
// system; another directory for tests and packaging).
//
//	/opt/tether-agent/bin/tether-agent   binary (directory writable by the service, for self-update)
//	/etc/tether-agent/agent.yaml         config (root:tether-agent 0640, directory 0750)
//	/var/lib/tether-agent                state (tether-agent 0700, systemd StateDirectory=)
//	/var/lib/tether-agent/update         self-update staging
func LinuxLayout(root string) Layout {
	j := func(p string) string { return filepath.Join("/", root, p) }
	return Layout{
		Name:       DefaultName,
		BinaryPath: j("/opt/tether-agent/bin/tether-agent"),
		ConfigPath: j("/etc/tether-agent/agent.yaml"),
		StateDir:   j("/var/lib/tether-agent"),
		UpdateDir:  j("/var/lib/tether-agent/update"),
	}
}

// WindowsLayout is the layout on Windows given %ProgramFiles% and
// %ProgramData% (usually C:\Program Files and C:\ProgramData).
//
//	%ProgramFiles%\Tether\tether-agent.exe     binary
//	%ProgramData%\Tether\agent.yaml            config
//	%ProgramData%\Tether\state                 state
//	%ProgramData%\Tether\state\update          self-update staging
func WindowsLayout(programFiles, programData string) Layout {
	pf := strings.TrimRight(programFiles, `\`)
	pd := strings.TrimRight(programData, `\`)
	return Layout{
		Name:       DefaultName,
		BinaryPath: pf + `\Tether\tether-agent.exe`,
		ConfigPath: pd + `\Tether\agent.yaml`,
		StateDir:   pd + `\Tether\state`,
		UpdateDir:  pd + `\Tether\state\update`,
	}
}

// ServiceArgs are the arguments the service manager passes to the binary:
// the service run mode and the config file. Nothing secret: the agent
// reads its identity from the state directory named in the config.
func (l Layout) ServiceArgs() []string {
	return []string{"service", "--config", l.ConfigPath}
}

// checkUnitPath refuses a path that would need quoting or escaping in a
// systemd unit: the unit is generated text, and a path with white space,
// quotes, "%" (specifier), "$" (variable) or a backslash or control
// character would be misread by systemd.
func checkUnitPath(what, p string) error {
	if !path.IsAbs(p) {
		return fmt.Errorf("%s %q is not an absolute path", what, p)
	}
	for _, r := range p {
		if r <= ' ' || r == 0x7f || strings.ContainsRune(`"'\%$;`, r) {
			return fmt.Errorf("%s %q: the character %q cannot be used in a systemd unit", what, p, r)
		}
	}
	return nil
}

// ErrUnsupported is returned on an OS with no service support here.
var ErrUnsupported = errors.New("installing the agent as a service is supported on Linux (systemd) and Windows only")
