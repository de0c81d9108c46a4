//go:build !linux && !windows

package installer

import (
	"io"

	"github.com/kardianos/service"
)

// DefaultLayout is LinuxLayout(""): the paths of a Unix system.
func DefaultLayout() Layout { return LinuxLayout("") }

func serviceConfig(Layout) (*service.Config, error) { return nil, ErrUnsupported }

func install(Options) error { return ErrUnsupported }

func purgeAccount(Layout, io.Writer) error { return ErrUnsupported }

// statusCommand is nil: the service manager's error says what is wrong.
func statusCommand(string) []string { return nil }
