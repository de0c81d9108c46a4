package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/agent"
	"github.com/tetherhq/tether/cmd/internal/cli"
	"github.com/tetherhq/tether/installer"
)

// The status the agent exits with when refused for good is the one the
// service definitions treat as "do not restart".
func TestExitRefusedIsTheServiceNoRestartStatus(t *testing.T) {
	if agent.ExitRefused != installer.ExitNoRestart {
		t.Fatalf("agent.ExitRefused is %d but installer.ExitNoRestart (RestartPreventExitStatus=) is %d", agent.ExitRefused, installer.ExitNoRestart)
	}
	var err error = &agent.RefusedError{}
	if ec, ok := err.(interface{ ExitCode() int }); !ok || ec.ExitCode() != installer.ExitNoRestart {
		t.Fatalf("agent.RefusedError does not carry ExitCode() %d for the service run mode", installer.ExitNoRestart)
	}
}

// run runs tether-agent in this process as main does, with env as its
// whole environment and stdin as its standard input.
func run(t *testing.T, env map[string]string, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	a := &app{info: cli.BuildInfo{Program: prog, Version: "1.2.3", Commit: "abc", Date: "2025-06-01T12:00:00Z", Go: "go1.26", Platform: "linux/amd64"},
		env: func(k string) string { return env[k] }, args: args}
	var out, errOut bytes.Buffer
	root := newRoot(a, strings.NewReader(stdin), &out, &errOut)
	code = cli.Execute(context.Background(), root, goFlagSpellings(root, args), &errOut)
	return code, out.String(), errOut.String()
}

// helpFlags returns the flags a help text lists under title ("Flags",
// "Global Flags"), by long name, --help left out.
func helpFlags(help, title string) []string {
	var fs []string
	in := false
	for _, line := range strings.Split(help, "\n") {
		switch {
		case line == title+":":
			in = true
		case line == "" || !strings.HasPrefix(line, " "):
			in = false
		case in:
			for _, w := range strings.Fields(line) {
				if strings.HasPrefix(w, "--") {
					if w != "--help" {
						fs = append(fs, strings.TrimPrefix(w, "--"))
					}
					break
				}
			}
		}
	}
	slices.Sort(fs)
	return fs
}

// Every command answers --help with exit 0, its usage line and its own
// flags only; -o is the one global flag. A command added without a line
// here fails the test.
func TestCommandHelpListsItsOwnFlags(t *testing.T) {
	want := map[string][]string{
		"enroll":     {"config", "force", "proxy", "proxy-ca", "relay", "state-dir", "timeout", "token", "token-file"},
		"run":        {"config"},
		"service":    {"config"},
		"install":    {"config", "files-only"},
		"uninstall":  {"purge"},
		"start":      nil,
		"stop":       nil,
		"unit":       nil,
		"status":     {"addr", "config", "timeout"},
		"access-log": {"backend", "ca", "config", "file", "key", "key-record", "rotate-key", "service", "since", "verify"},
		"version":    {"short"},
	}
	root := newRoot(&app{env: func(string) string { return "" }}, nil, &bytes.Buffer{}, &bytes.Buffer{})
	var leaves []string
	for path := range cli.Leaves(root) {
		leaves = append(leaves, path)
	}
	slices.Sort(leaves)
	var wantLeaves []string
	for path := range want {
		wantLeaves = append(wantLeaves, path)
	}
	slices.Sort(wantLeaves)
	if !slices.Equal(leaves, wantLeaves) {
		t.Errorf("commands %v, want %v", leaves, wantLeaves)
	}
	for path, flags := range want {
		t.Run(path, func(t *testing.T) {
			code, stdout, stderr := run(t, nil, "", path, "--help")
			if code != 0 || stderr != "" {
				t.Fatalf("exit %d, stderr %q", code, stderr)
			}
			if !strings.Contains(stdout, "Usage:\n  tether-agent "+path) {
				t.Errorf("no usage line:\n%s", stdout)
			}
			if got := helpFlags(stdout, "Flags"); !slices.Equal(got, flags) {
				t.Errorf("flags %v, want %v:\n%s", got, flags, stdout)
			}
			if got := helpFlags(stdout, "Global Flags"); !slices.Equal(got, []string{"output"}) {
				t.Errorf("global flags %v, want [output]", got)
			}
		})
	}
	// The root's help names every command.
	code, stdout, _ := run(t, nil, "", "--help")
	for path := range want {
		if code != 0 || !strings.Contains(stdout, "\n  "+path+" ") {
			t.Errorf("tether-agent --help (exit %d) does not list %s:\n%s", code, path, stdout)
		}
	}
}

// Mistakes on the command line exit 2 with what is wrong (and a typo's
// likely meaning), then a pointer to the help, never the whole usage;
// failures for other reasons exit 1; the spellings of earlier versions
// work.
func TestCommandLineMistakes(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.yaml")
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stderr []string
	}{
		{"typo of a command", []string{"stauts"}, 2, []string{`unknown command "stauts" for "tether-agent"; did you mean one of "start", "status"?`, "Run 'tether-agent --help' for usage."}},
		{"typo of a command, flags after it", []string{"enrol", "--relay", "r:7443", "--token-file", missing}, 2, []string{`unknown command "enrol" for "tether-agent"; did you mean "enroll"?`}},
		{"typo of a hyphenated command", []string{"acess-log"}, 2, []string{`did you mean "access-log"?`}},
		{"unknown command", []string{"frobnicate"}, 2, []string{`unknown command "frobnicate" for "tether-agent"; its commands are`}},
		{"typo of a flag", []string{"run", "--conifg", missing}, 2, []string{"unknown flag: --conifg; did you mean --config?", "Run 'tether-agent run --help' for usage."}},
		{"another command's flag", []string{"run", "--purge"}, 2, []string{"unknown flag: --purge"}},
		{"run without a config", []string{"run"}, 2, []string{"run needs --config FILE"}},
		{"service without a config", []string{"service"}, 2, []string{"service needs --config FILE"}},
		{"install without a config", []string{"install"}, 2, []string{"install needs --config FILE"}},
		{"an argument", []string{"run", "--config", missing, "extra"}, 2, []string{`run takes no arguments (got "extra")`}},
		{"enroll, a missing token file", []string{"enroll", "--token-file", missing}, 1, []string{"read token file"}},
		{"enroll without a token", []string{"enroll", "--relay", "127.0.0.1:1", "--state-dir", dir}, 2, []string{"enroll needs a join token: --token-file FILE, $TETHER_JOIN_TOKEN or --token"}},
		{"enroll, two tokens", []string{"enroll", "--token", "t", "--token-file", missing}, 2, []string{"--token or --token-file, not both"}},
		{"bad output format", []string{"status", "-o", "xml"}, 2, []string{`invalid argument "xml" for "-o, --output" flag: want table, json or yaml`}},
		{"status, both addresses", []string{"status", "--config", missing, "--addr", "127.0.0.1:1"}, 2, []string{"give --config or --addr, not both"}},
		{"access-log --verify with a filter", []string{"access-log", "--verify", "--service", "db", "--file", missing}, 2, []string{"--verify checks the whole log"}},
		{"access-log --key without --verify", []string{"access-log", "--key", strings.Repeat("ab", 32), "--file", missing}, 2, []string{"--key is for --verify"}},
		{"access-log --key malformed", []string{"access-log", "--verify", "--key", "abc", "--file", missing}, 2, []string{"want the 64 hex digits"}},
		{"access-log --since negative", []string{"access-log", "--since", "-2h", "--file", missing}, 2, []string{"want a positive duration"}},
		{"a missing config", []string{"run", "--config", missing}, 1, []string{"tether-agent: ", "missing.yaml"}},
		{"the single-dash spelling", []string{"run", "-config", missing}, 1, []string{"missing.yaml"}},
		{"the single-dash spelling with =", []string{"status", "-config=" + missing, "-o", "text"}, 1, []string{"missing.yaml"}},
		{"a global flag before the command", []string{"-o", "json", "run", "--config", missing}, 1, []string{"missing.yaml"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := run(t, nil, "", tc.args...)
			if code != tc.code {
				t.Errorf("exit %d, want %d; stderr:\n%s", code, tc.code, stderr)
			}
			for _, w := range tc.stderr {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
			if strings.Contains(stdout+stderr, "Usage:") || strings.Contains(stdout+stderr, "Flags:") {
				t.Errorf("usage printed:\n%s%s", stdout, stderr)
			}
			if stdout != "" {
				t.Errorf("stdout %q, want nothing", stdout)
			}
		})
	}
	// Alone, or a group of commands alone: the help on stderr, exit 2.
	if code, stdout, stderr := run(t, nil, ""); code != 2 || stdout != "" || !strings.Contains(stderr, "Usage:") {
		t.Errorf("tether-agent alone: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	// help, -h and --help, as before: the help on stdout, exit 0.
	for _, args := range [][]string{{"help"}, {"-h"}, {"--help"}, {"-help"}, {"help", "enroll"}, {"enroll", "-h"}} {
		if code, stdout, _ := run(t, nil, "", args...); code != 0 || !strings.Contains(stdout, "Usage:") {
			t.Errorf("tether-agent %s: exit %d\n%s", strings.Join(args, " "), code, stdout)
		}
	}
}

// The join token is taken from a file, standard input or the environment
// without a word; from --token, with a warning that it is a secret on the
// command line. Every source reaches enrolment (which fails here: the
// token is no token).
func TestJoinTokenSources(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "token")
	if err := os.WriteFile(file, []byte("from-the-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	enroll := []string{"enroll", "--relay", "127.0.0.1:1", "--state-dir", filepath.Join(dir, "state"), "--timeout", "5s"}
	for _, tc := range []struct {
		name  string
		env   map[string]string
		stdin string
		args  []string
		warn  bool
	}{
		{"file", nil, "", []string{"--token-file", file}, false},
		{"standard input", nil, "from-stdin\n", []string{"--token-file", "-"}, false},
		{"environment", map[string]string{"TETHER_JOIN_TOKEN": "from-env"}, "", nil, false},
		{"command line", nil, "", []string{"--token", "from-the-command-line"}, true},
		{"command line, old spelling", nil, "", []string{"-token=from-the-command-line"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := run(t, tc.env, tc.stdin, append(slices.Clone(enroll), tc.args...)...)
			if code != 1 || !strings.Contains(stderr, "enrolment failed") || stdout != "" {
				t.Errorf("exit %d, stdout %q, stderr %q; want exit 1, enrolment failed", code, stdout, stderr)
			}
			if warned := strings.Contains(stderr, "tether-agent: "+tokenOnCommandLine); warned != tc.warn {
				t.Errorf("warned about --token: %v, want %v:\n%s", warned, tc.warn, stderr)
			}
		})
	}
}

// version prints what tether-relay and tetherctl print: the version,
// commit, build date and Go version, -o json or yaml for programs, and
// --short the version alone, as earlier versions printed it; --version
// prints the long form too.
func TestVersion(t *testing.T) {
	code, stdout, _ := run(t, nil, "", "version")
	if code != 0 || stdout != "tether-agent 1.2.3\n  commit:  abc\n  built:   2025-06-01T12:00:00Z\n  go:      go1.26 linux/amd64\n" {
		t.Errorf("version: exit %d\n%s", code, stdout)
	}
	if code, short, _ := run(t, nil, "", "version", "--short"); code != 0 || short != "1.2.3\n" {
		t.Errorf("version --short: exit %d, %q", code, short)
	}
	if code, long, _ := run(t, nil, "", "--version"); code != 0 || long != stdout {
		t.Errorf("--version: exit %d, %q", code, long)
	}
	for _, args := range [][]string{{"version", "-o", "json"}, {"-o", "json", "version"}, {"version", "--output=json"}} {
		code, out, _ := run(t, nil, "", args...)
		var v cli.BuildInfo
		if err := json.Unmarshal([]byte(out), &v); code != 0 || err != nil || v.Program != prog || v.Version != "1.2.3" || v.Commit != "abc" || v.Go != "go1.26" {
			t.Errorf("%s: exit %d, %v, %q", strings.Join(args, " "), code, err, out)
		}
	}
}

// Shell completion: scripts for the four shells, and the completions the
// scripts ask for: commands, a command's flags, the output formats.
func TestCompletion(t *testing.T) {
	for _, sh := range []string{"bash", "zsh", "fish", "powershell"} {
		if code, out, _ := run(t, nil, "", "completion", sh); code != 0 || !strings.Contains(out, "tether-agent") {
			t.Errorf("completion %s: exit %d, %d bytes", sh, code, len(out))
		}
	}
	for _, tc := range []struct {
		args []string
		want []string
		not  []string
	}{
		{[]string{"st"}, []string{"start", "status", "stop"}, []string{"run"}},
		{[]string{"access-log", "--"}, []string{"--verify", "--since", "--config", "--output"}, []string{"--purge", "--relay"}},
		{[]string{"status", "-o", ""}, []string{"table", "json", "yaml"}, nil},
	} {
		code, out, _ := run(t, nil, "", append([]string{"__complete"}, tc.args...)...)
		var words []string
		for _, line := range strings.Split(out, "\n") {
			if w, _, _ := strings.Cut(line, "\t"); w != "" && !strings.HasPrefix(w, ":") {
				words = append(words, w)
			}
		}
		for _, w := range tc.want {
			if code != 0 || !slices.Contains(words, w) {
				t.Errorf("complete %q: exit %d, %v lacks %s", tc.args, code, words, w)
			}
		}
		for _, w := range tc.not {
			if slices.Contains(words, w) {
				t.Errorf("complete %q: %v offers %s", tc.args, words, w)
			}
		}
	}
}

// Only the long flags of the agent's commands, with one dash, become two;
// values, shorthands, positionals and what follows "--" are left alone.
func TestGoFlagSpellings(t *testing.T) {
	root := newRoot(&app{env: func(string) string { return "" }}, nil, &bytes.Buffer{}, &bytes.Buffer{})
	for _, tc := range []struct{ in, want []string }{
		{[]string{"run", "-config", "a.yaml"}, []string{"run", "--config", "a.yaml"}},
		{[]string{"install", "-config=a.yaml", "-files-only"}, []string{"install", "--config=a.yaml", "--files-only"}},
		{[]string{"access-log", "-verify", "-o", "json", "-ojson", "-since", "-2h"}, []string{"access-log", "--verify", "-o", "json", "-ojson", "--since", "-2h"}},
		{[]string{"enroll", "--token-file", "-", "-state-dir", "d", "-force=false"}, []string{"enroll", "--token-file", "-", "--state-dir", "d", "--force=false"}},
		{[]string{"-help"}, []string{"--help"}},
		{[]string{"run", "--", "-config"}, []string{"run", "--", "-config"}},
		{[]string{"run", "-nosuch"}, []string{"run", "-nosuch"}},
	} {
		if got := goFlagSpellings(root, tc.in); !slices.Equal(got, tc.want) {
			t.Errorf("%q: got %q, want %q", tc.in, got, tc.want)
		}
	}
}

// status without --config or --addr, where the service manager cannot
// answer (no systemd as PID 1, as in a container), says what the
// service manager said and how to ask an agent run by hand.
func TestStatusWithoutServiceManager(t *testing.T) {
	err := status(t.Context(), statusOptions{timeout: time.Second}, cli.Table, io.Discard)
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Skipf("the service manager answered (%v): nothing to check here", err)
	}
	msg := err.Error()
	if !strings.Contains(msg, "give --config FILE or --addr HOST:PORT") || !strings.Contains(msg, "failed (exit status") {
		t.Fatalf("got %q, want the service manager's command and message, and --config/--addr", msg)
	}
	said, _, _ := strings.Cut(msg, "; for an agent not run by the service manager")
	if _, said, ok := strings.Cut(said, "): "); !ok || strings.TrimSpace(said) == "" {
		t.Fatalf("got %q: the service manager's own message is missing", msg)
	}
}
