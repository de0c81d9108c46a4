package installer

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"unsafe"

	"github.com/kardianos/service"
)

// DefaultLayout is WindowsLayout of this machine's %ProgramFiles% and
// %ProgramData%.
func DefaultLayout() Layout {
	pf, pd := os.Getenv("ProgramFiles"), os.Getenv("ProgramData")
	if pf == "" {
		pf = `C:\Program Files`
	}
	if pd == "" {
		pd = `C:\ProgramData`
	}
	return WindowsLayout(pf, pd)
}

func serviceConfig(l Layout) (*service.Config, error) {
	return &service.Config{
		Name:        l.Name,
		DisplayName: "Tether agent",
		Description: "Tether agent (outbound tunnel to the Tether relay)",
		Executable:  l.BinaryPath,
		Arguments:   l.ServiceArgs(),
		UserName:    WindowsAccount(l.Name),
		Option: service.KeyValue{
			"StartType":              "automatic",
			"OnFailure":              "restart",
			"OnFailureDelayDuration": "5s",
			"OnFailureResetPeriod":   86400,
		},
	}, nil
}

func install(o Options) error {
	l := o.Layout
	image, err := WindowsImagePath(l.BinaryPath, l.ServiceArgs())
	if err != nil {
		return err
	}
	sid := ServiceSID(l.Name)
	// Directories get their security descriptors before anything is
	// written into them; files inherit them.
	for _, d := range []struct{ dir, sddl string }{
		{l.BinDir(), BinSDDL(sid)},
		{l.ConfigDir(), ConfigSDDL(sid)},
		{l.StateDir, StateSDDL(sid)},
		{l.UpdateDir, StateSDDL(sid)},
	} {
		if err := os.MkdirAll(d.dir, 0o700); err != nil {
			return err
		}
		if err := secureTree(d.dir, d.sddl); err != nil {
			return fmt.Errorf("set permissions of %s: %w", d.dir, err)
		}
	}
	if err := copyFile(o.SourceBinary, l.BinaryPath, 0o755); err != nil {
		return fmt.Errorf("install binary: %w", err)
	}
	fmt.Fprintf(o.Out, "installed %s\n", l.BinaryPath)
	if err := copyFile(o.SourceConfig, l.ConfigPath, 0o600); err != nil {
		return fmt.Errorf("install config: %w", err)
	}
	// The config dir and the state dir may hold files from before (a
	// reinstall): give them the directories' descriptors too.
	for _, d := range []struct{ dir, sddl string }{
		{l.BinDir(), BinSDDL(sid)}, {l.ConfigDir(), ConfigSDDL(sid)}, {l.StateDir, StateSDDL(sid)},
	} {
		if err := secureTree(d.dir, d.sddl); err != nil {
			return fmt.Errorf("set permissions of %s: %w", d.dir, err)
		}
	}
	fmt.Fprintf(o.Out, "installed %s\n", l.ConfigPath)
	if o.FilesOnly {
		return nil
	}
	if err := register(l); err != nil {
		return err
	}
	// Always quote the executable in the ImagePath, whatever the path.
	if b, err := exec.Command("sc.exe", "config", l.Name, "binPath=", image).CombinedOutput(); err != nil {
		return fmt.Errorf("set the service's image path: %v: %s", err, b)
	}
	fmt.Fprintf(o.Out, "installed service %s running as %s (start it with tether-agent start)\n", l.Name, WindowsAccount(l.Name))
	return nil
}

func purgeAccount(Layout, io.Writer) error { return nil } // virtual accounts go with the service

var (
	advapi32                = syscall.NewLazyDLL("advapi32.dll")
	procConvertStringSDToSD = advapi32.NewProc("ConvertStringSecurityDescriptorToSecurityDescriptorW")
	procSetFileSecurity     = advapi32.NewProc("SetFileSecurityW")
	kernel32                = syscall.NewLazyDLL("kernel32.dll")
	procLocalFree           = kernel32.NewProc("LocalFree")
)

const (
	ownerSecurityInformation         = 0x1
	groupSecurityInformation         = 0x2
	daclSecurityInformation          = 0x4
	protectedDaclSecurityInformation = 0x80000000
	sddlRevision1                    = 1
)

// secureTree applies sddl to dir and everything in it.
func secureTree(dir, sddl string) error {
	return filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return setSDDL(p, sddl)
	})
}

func setSDDL(path, sddl string) error {
	s, err := syscall.UTF16PtrFromString(sddl)
	if err != nil {
		return err
	}
	p, err := syscall.UTF16PtrFromString(path)
	if err != nil {
		return err
	}
	var sd uintptr
	if r, _, e := procConvertStringSDToSD.Call(uintptr(unsafe.Pointer(s)), sddlRevision1, uintptr(unsafe.Pointer(&sd)), 0); r == 0 {
		return fmt.Errorf("parse security descriptor %s: %w", sddl, e)
	}
	defer procLocalFree.Call(sd)
	info := uintptr(ownerSecurityInformation | groupSecurityInformation | daclSecurityInformation | protectedDaclSecurityInformation)
	if r, _, e := procSetFileSecurity.Call(uintptr(unsafe.Pointer(p)), info, sd); r == 0 {
		return fmt.Errorf("SetFileSecurity: %w", e)
	}
	return nil
}

// statusCommand is nil: the service manager's error says what is wrong.
func statusCommand(string) []string { return nil }
