package installer

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func unitLines(t *testing.T, l Layout) []string {
	t.Helper()
	u, err := SystemdUnit(l)
	if err != nil {
		t.Fatalf("SystemdUnit: %v", err)
	}
	return strings.Split(u, "\n")
}

func TestSystemdUnitDefaultLayout(t *testing.T) {
	lines := unitLines(t, LinuxLayout(""))
	for _, want := range []string{
		"ExecStart=/opt/tether-agent/bin/tether-agent service --config /etc/tether-agent/agent.yaml",
		"User=tether-agent",
		"Group=tether-agent",
		"Restart=on-failure",
		"RestartPreventExitStatus=3",
		"StateDirectory=tether-agent",
		"StateDirectoryMode=0700",
		"ReadWritePaths=/opt/tether-agent/bin",
		"NoNewPrivileges=yes",
		"ProtectSystem=strict",
		"ProtectHome=yes",
		"PrivateTmp=yes",
		"CapabilityBoundingSet=",
		"AmbientCapabilities=",
		"UMask=0077",
		"WantedBy=multi-user.target",
	} {
		if !slices.Contains(lines, want) {
			t.Errorf("unit lacks %q", want)
		}
	}
	for _, l := range lines {
		for _, bad := range []string{"Environment", "tjt1_", "--token", "PassEnvironment"} {
			if strings.Contains(l, bad) {
				t.Errorf("unit line %q contains %q: nothing secret or from the environment belongs in the unit", l, bad)
			}
		}
	}
}

func TestSystemdUnitStateOutsideVarLib(t *testing.T) {
	l := LinuxLayout("")
	l.StateDir = "/srv/tether/state"
	lines := unitLines(t, l)
	if !slices.Contains(lines, "ReadWritePaths=/srv/tether/state /opt/tether-agent/bin") {
		t.Errorf("got %q, want the state directory and the binary's directory in ReadWritePaths", lines)
	}
	for _, line := range lines {
		if strings.HasPrefix(line, "StateDirectory=") {
			t.Errorf("got %q for a state directory outside /var/lib", line)
		}
	}
}

func TestSystemdUnitRefusesUnsafePaths(t *testing.T) {
	for name, mod := range map[string]func(*Layout){
		"relative binary":   func(l *Layout) { l.BinaryPath = "bin/tether-agent" },
		"space in config":   func(l *Layout) { l.ConfigPath = "/etc/tether agent/agent.yaml" },
		"specifier":         func(l *Layout) { l.StateDir = "/var/lib/%n" },
		"variable":          func(l *Layout) { l.ConfigPath = "/etc/$HOME/agent.yaml" },
		"newline":           func(l *Layout) { l.StateDir = "/var/lib/x\nExecStartPre=/bin/sh" },
		"quote":             func(l *Layout) { l.BinaryPath = `/opt/"x"/tether-agent` },
		"upper-case name":   func(l *Layout) { l.Name = "Tether" },
		"name with a space": func(l *Layout) { l.Name = "tether agent" },
	} {
		t.Run(name, func(t *testing.T) {
			l := LinuxLayout("")
			mod(&l)
			if u, err := SystemdUnit(l); err == nil {
				t.Errorf("got a unit, want an error:\n%s", u)
			}
		})
	}
}

// TestSystemdAnalyzeVerify runs systemd's own checker over the unit (it
// works without systemd as PID 1). It fails on any message, since
// systemd-analyze exits 0 after an unknown or unparsable key, which it
// only reports. scripts/deps.sh installs systemd-analyze.
func TestSystemdAnalyzeVerify(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatalf("systemd-analyze is not installed (scripts/deps.sh installs it): %v", err)
	}
	dir := t.TempDir()
	l := LinuxLayout("")
	// verify checks that ExecStart is executable: point it at a real file.
	l.BinaryPath = filepath.Join(dir, "bin", "tether-agent")
	if err := os.MkdirAll(filepath.Dir(l.BinaryPath), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(l.BinaryPath, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	unit, err := SystemdUnit(l)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "tether-agent.service")
	if err := os.WriteFile(path, []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(sa, "verify", path).CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s\nunit:\n%s", err, out, unit)
	}

	// The check itself can fail: a misspelt key is reported.
	bad := strings.Replace(unit, "ProtectHome=yes", "ProtectHomes=yes", 1)
	if err := os.WriteFile(path, []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, _ := exec.Command(sa, "verify", path).CombinedOutput(); !strings.Contains(string(out), "ProtectHomes") {
		t.Errorf("systemd-analyze verify said nothing of a misspelt key: %q", out)
	}
}
