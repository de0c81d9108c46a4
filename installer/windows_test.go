package installer

import (
	"strings"
	"testing"
)

func TestServiceSID(t *testing.T) {
	for _, c := range []struct{ name, want string }{
		// sc showsid TrustedInstaller, a SID documented by Microsoft.
		{"TrustedInstaller", "S-1-5-80-956008885-3418522649-1831038044-1853292631-2271478464"},
		// Case does not matter: Windows upper-cases the name first.
		{"trustedinstaller", "S-1-5-80-956008885-3418522649-1831038044-1853292631-2271478464"},
	} {
		if got := ServiceSID(c.name); got != c.want {
			t.Errorf("ServiceSID(%q) = %s, want %s", c.name, got, c.want)
		}
	}
	if a, b := ServiceSID("tether-agent"), ServiceSID("tether-agent2"); a == b || !strings.HasPrefix(a, "S-1-5-80-") {
		t.Errorf("got %s and %s", a, b)
	}
}

func TestWindowsLayout(t *testing.T) {
	l := WindowsLayout(`C:\Program Files\`, `C:\ProgramData`)
	for _, c := range []struct{ what, got, want string }{
		{"binary", l.BinaryPath, `C:\Program Files\Tether\tether-agent.exe`},
		{"bin dir", l.BinDir(), `C:\Program Files\Tether`},
		{"config", l.ConfigPath, `C:\ProgramData\Tether\agent.yaml`},
		{"config dir", l.ConfigDir(), `C:\ProgramData\Tether`},
		{"state", l.StateDir, `C:\ProgramData\Tether\state`},
		{"update", l.UpdateDir, `C:\ProgramData\Tether\state\update`},
	} {
		if c.got != c.want {
			t.Errorf("%s: got %s, want %s", c.what, c.got, c.want)
		}
	}
	if got, want := WindowsAccount("tether-agent"), `NT SERVICE\tether-agent`; got != want {
		t.Errorf("account: got %s, want %s", got, want)
	}
}

func TestWindowsImagePath(t *testing.T) {
	l := WindowsLayout(`C:\Program Files`, `C:\ProgramData`)
	got, err := WindowsImagePath(l.BinaryPath, l.ServiceArgs())
	if err != nil {
		t.Fatal(err)
	}
	if want := `"C:\Program Files\Tether\tether-agent.exe" service --config C:\ProgramData\Tether\agent.yaml`; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
	// The executable is quoted even without spaces; arguments when needed.
	got, err = WindowsImagePath(`D:\tether\a.exe`, []string{"service", "--config", `D:\my files\a b.yaml`, `x"y`, ""})
	if err != nil {
		t.Fatal(err)
	}
	if want := `"D:\tether\a.exe" service --config "D:\my files\a b.yaml" "x\"y" ""`; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
	for _, bad := range []string{`C:\a"b.exe`, "C:\\a\nb.exe"} {
		if _, err := WindowsImagePath(bad, nil); err == nil {
			t.Errorf("WindowsImagePath(%q): want an error", bad)
		}
	}
}

func TestSDDL(t *testing.T) {
	sid := ServiceSID("tether-agent")
	for _, c := range []struct {
		name, sddl string
		want       []string
		absent     []string
	}{
		{"state", StateSDDL(sid), []string{"D:PAI", "(A;OICI;FA;;;SY)", "(A;OICI;FA;;;BA)", "(A;OICI;FA;;;" + sid + ")"}, []string{";BU)", ";WD)", ";AU)"}},
		{"config", ConfigSDDL(sid), []string{"D:PAI", "(A;OICI;FA;;;SY)", "(A;OICI;FA;;;BA)", "(A;OICI;FR;;;" + sid + ")"}, []string{";BU)", ";WD)", ";AU)", "FA;;;" + sid}},
		{"bin", BinSDDL(sid), []string{"D:PAI", "(A;OICI;FA;;;BA)", "(A;OICI;0x1301bf;;;" + sid + ")", "(A;OICI;FRFX;;;BU)"}, []string{";WD)", "FA;;;BU", "FA;;;" + sid}},
	} {
		if !strings.HasPrefix(c.sddl, "O:BAG:SY") {
			t.Errorf("%s: %s is not owned by Administrators", c.name, c.sddl)
		}
		for _, w := range c.want {
			if !strings.Contains(c.sddl, w) {
				t.Errorf("%s: %s lacks %s", c.name, c.sddl, w)
			}
		}
		for _, a := range c.absent {
			if strings.Contains(c.sddl, a) {
				t.Errorf("%s: %s contains %s", c.name, c.sddl, a)
			}
		}
	}
}
