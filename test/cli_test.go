package test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tetherhq/tether/agent"
)

// helpSections parses a command's --help: each section's entries by
// title ("Flags", "Global Flags", "Available Commands", …), the first
// word of each indented line.
func helpSections(help string) map[string][]string {
	out := map[string][]string{}
	title := ""
	for _, line := range strings.Split(help, "\n") {
		switch {
		case line == "":
			title = ""
		case !strings.HasPrefix(line, " ") && strings.HasSuffix(line, ":"):
			title = strings.TrimSuffix(line, ":")
		case title != "" && strings.HasPrefix(line, "  "):
			f := strings.Fields(line)
			if len(f) == 0 {
				continue
			}
			word := f[0]
			if strings.HasPrefix(word, "-") && !strings.HasPrefix(word, "--") && len(f) > 1 { // "-o, --output"
				word = f[1]
			}
			out[title] = append(out[title], strings.TrimSuffix(word, ","))
		}
	}
	return out
}

// leafHelps walks bin's commands through their help and returns every
// runnable leaf's help by path ("agent list"), help and completion left
// out.
func leafHelps(t *testing.T, bin string) map[string]string {
	t.Helper()
	out := map[string]string{}
	var walk func(path []string)
	walk = func(path []string) {
		stdout, stderr, err := runCmd(t, bin, append(path, "--help")...)
		if err != nil || stderr != "" {
			t.Fatalf("%s %s --help: %v\n%s", filepath.Base(bin), strings.Join(path, " "), err, stderr)
		}
		var subs []string
		for title, entries := range helpSections(stdout) {
			if title == "Usage" || strings.Contains(title, "Flags") || title == "Examples" || title == "Aliases" {
				continue
			}
			for _, e := range entries {
				if e != "help" && e != "completion" {
					subs = append(subs, e)
				}
			}
		}
		if len(subs) == 0 {
			out[strings.Join(path, " ")] = stdout
			return
		}
		for _, s := range subs {
			walk(append(slices.Clip(path), s))
		}
	}
	walk(nil)
	return out
}

// TestCommandHelp: every command of both binaries answers --help with exit
// 0 and lists its own flags only; flags that once were everyone's belong
// to their command alone; the commands both binaries run take the same
// flags (but for the few that need a running relay's state).
func TestCommandHelp(t *testing.T) {
	relayHelp, ctlHelp := leafHelps(t, bins.relay), leafHelps(t, bins.ctl)
	if len(relayHelp) < 30 || len(ctlHelp) < 30 {
		t.Fatalf("found %d tether-relay and %d tetherctl commands, want the whole vocabulary", len(relayHelp), len(ctlHelp))
	}
	flagsOf := func(help string) []string {
		fs := slices.DeleteFunc(helpSections(help)["Flags"], func(f string) bool { return f == "--help" })
		slices.Sort(fs)
		return fs
	}
	owners := map[string][]string{ // flag: the only commands that take it
		"--max-streams": {"tenant limits", "limits"},
		"--replace":     {"tenant limits"},
		"--percent":     {"release rollout"},
		"--allow":       {"backend add"},
		"--reason":      {"agent revoke"},
		"--message":     {"agent drain"},
		"--unhealthy":   {"agent list"},
		"--cursor":      {"audit", "release status"},
		"--renew-now":   {"ca rotate"},
		"--uses":        {"token create"},
		"--listen":      {"forward"},
		"--heartbeat":   {"serve"},
	}
	globals := map[string][]string{
		"tether-relay": {"--data-dir", "--config", "--output"},
		"tetherctl":    {"--output", "--url", "--token", "--token-file", "--ca", "--cert", "--key", "--timeout"},
	}
	for bin, helps := range map[string]map[string]string{"tether-relay": relayHelp, "tetherctl": ctlHelp} {
		for path, help := range helps {
			if g := helpSections(help)["Global Flags"]; bin == "tetherctl" && path == "forward" && len(g) > 0 {
				t.Errorf("tetherctl forward --help lists the admin API's flags, which it does not use: %v", g)
			}
			if !strings.Contains(help, "Usage:\n  "+bin+" "+path) {
				t.Errorf("%s %s --help has no usage line:\n%s", bin, path, help)
			}
			for _, f := range flagsOf(help) {
				if slices.Contains(globals[bin], f) {
					t.Errorf("%s %s --help lists the global flag %s among its own", bin, path, f)
				}
				if own, ok := owners[f]; ok && !slices.Contains(own, path) {
					t.Errorf("%s %s --help lists %s, a flag of %v only", bin, path, f, own)
				}
			}
		}
	}
	for _, path := range []string{"tenant limits", "release rollout", "backend add", "agent revoke", "token create", "audit", "serve"} {
		if path == "serve" {
			if fs := flagsOf(relayHelp[path]); len(fs) < 30 {
				t.Errorf("serve lists %d flags, want every setting", len(fs))
			}
			continue
		}
		if len(flagsOf(relayHelp[path])) == 0 {
			t.Errorf("tether-relay %s lists no flags", path)
		}
	}

	// One vocabulary: the commands both run take the same flags, but
	// where the live state only the running relay has adds some.
	ctlOnly := map[string][]string{"agent list": {"--state", "--unhealthy"}, "audit": {"--cursor"}}
	for path, rh := range relayHelp {
		ch, ok := ctlHelp[path]
		if !ok {
			if path != "serve" && path != "init" && path != "demo" && path != "version" {
				t.Errorf("tether-relay %s has no tetherctl counterpart", path)
			}
			continue
		}
		if strings.Contains(rh, "Not available here") || strings.Contains(ch, "Not available here") {
			continue
		}
		want := slices.Concat(flagsOf(rh), ctlOnly[path])
		slices.Sort(want)
		if got := flagsOf(ch); !slices.Equal(got, want) {
			t.Errorf("%s: tetherctl takes %v, tether-relay %v", path, got, flagsOf(rh))
		}
	}
	for _, path := range []string{"agent drain", "ca rotate", "operator token create", "backend certificate", "release publish"} {
		_, inRelay := relayHelp[path]
		_, inCtl := ctlHelp[path]
		if !inRelay || !inCtl {
			t.Errorf("%s: in tether-relay %v, in tetherctl %v; want both", path, inRelay, inCtl)
		}
	}
}

// TestCommandLineMistakes: a typo'd command or flag exits 2 with a
// suggestion and no usage; a command refused for another reason exits 1
// without usage; success prints none either.
func TestCommandLineMistakes(t *testing.T) {
	noAdmin := []string{"TETHER_ADMIN_URL=", "TETHER_ADMIN_TOKEN=", "TETHER_ADMIN_TOKEN_FILE=", "TETHER_DATA_DIR=" + filepath.Join(t.TempDir(), "none")}
	for _, tc := range []struct {
		bin    string
		args   []string
		code   int
		stderr []string
	}{
		{bins.relay, []string{"agnet", "list"}, 2, []string{`unknown command "agnet" for "tether-relay"; did you mean "agent"?`, "Run 'tether-relay --help' for usage."}},
		{bins.relay, []string{"tenant", "lst"}, 2, []string{`unknown command "lst" for "tether-relay tenant"; did you mean "list"?`}},
		{bins.relay, []string{"agent", "list", "--tenat", "acme"}, 2, []string{"unknown flag: --tenat; did you mean --tenant?", "Run 'tether-relay agent list --help' for usage."}},
		{bins.relay, []string{"agent", "show"}, 2, []string{"agent show needs ID"}},
		{bins.relay, []string{"token", "create", "--ttl", "soon", "--tenant", "acme"}, 2, []string{`invalid argument "soon" for "--ttl"`}},
		{bins.relay, []string{"tenant", "list", "-o", "xml"}, 2, []string{"want table, json or yaml"}},
		{bins.relay, []string{"tenant", "list"}, 1, []string{"does not exist"}},
		{bins.relay, []string{"agent", "drain", "x", "--data-dir", "nowhere"}, 1, []string{"data directory nowhere does not exist"}},
		{bins.ctl, []string{"agnet", "list"}, 2, []string{`did you mean "agent"?`}},
		{bins.ctl, []string{"agent", "lsit"}, 2, []string{`unknown command "lsit" for "tetherctl agent"; did you mean "list"?`}},
		{bins.ctl, []string{"tenant", "limits", "acme", "--max-stream", "5"}, 2, []string{"did you mean --max-streams?"}},
		{bins.ctl, []string{"nosuch"}, 2, []string{`unknown command "nosuch" for "tetherctl"`}},
		{bins.ctl, []string{"agent", "list"}, 1, []string{"no admin API address: set --url or TETHER_ADMIN_URL"}},
		{bins.ctl, []string{"ca", "rotate"}, 1, []string{"ca rotate is not available here", "tether-relay ca rotate"}},
		{bins.ctl, []string{"forward", "--map", "db.acme.tether"}, 1, []string{"want [HOST:]PORT=<service>.<tenant>.tether"}},
		{bins.agent, []string{"stauts"}, 2, []string{`unknown command "stauts" for "tether-agent"; did you mean one of "start", "status"?`, "Run 'tether-agent --help' for usage."}},
		{bins.agent, []string{"enrol", "--relay", "r:7443"}, 2, []string{`did you mean "enroll"?`}},
		{bins.agent, []string{"run", "--conifg", "agent.yaml"}, 2, []string{"unknown flag: --conifg; did you mean --config?", "Run 'tether-agent run --help' for usage."}},
		{bins.agent, []string{"run"}, 2, []string{"run needs --config FILE"}},
		{bins.agent, []string{"access-log", "--verify", "--since", "1h"}, 2, []string{"--verify checks the whole log"}},
		{bins.agent, []string{"run", "--config", "/nonexistent/agent.yaml"}, 1, []string{"tether-agent: ", "/nonexistent/agent.yaml"}},
		{bins.agent, []string{"service", "-config", "/nonexistent/agent.yaml"}, 1, []string{"/nonexistent/agent.yaml"}},
		{bins.agent, []string{"status", "--addr", "127.0.0.1:1", "-o", "text"}, 1, []string{"ask the agent at 127.0.0.1:1"}},
	} {
		name := filepath.Base(tc.bin) + " " + strings.Join(tc.args, " ")
		t.Run(name, func(t *testing.T) {
			stdout, stderr, err := runCmdEnv(t, noAdmin, tc.bin, tc.args...)
			if code := exitCode(err); code != tc.code {
				t.Errorf("exit %d, want %d\nstderr: %s", code, tc.code, stderr)
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
				t.Errorf("stdout: %q, want nothing", stdout)
			}
		})
	}

	// Success prints what was asked, no usage; completion scripts and
	// the version come from both.
	for _, bin := range []string{bins.relay, bins.ctl, bins.agent} {
		out := mustRun(t, bin, "version", "-o", "json")
		var v struct{ Program, Version, Go string }
		if err := json.Unmarshal([]byte(out), &v); err != nil || v.Program != filepath.Base(bin) || v.Version == "" || !strings.HasPrefix(v.Go, "go") {
			t.Errorf("%s version -o json: %q (%v)", filepath.Base(bin), out, err)
		}
		if out := mustRun(t, bin, "version"); !strings.Contains(out, "commit:") || strings.Contains(out, "Usage:") {
			t.Errorf("%s version:\n%s", filepath.Base(bin), out)
		}
		for _, sh := range []string{"bash", "zsh", "fish", "powershell"} {
			if out := mustRun(t, bin, "completion", sh); !strings.Contains(out, filepath.Base(bin)) {
				t.Errorf("%s completion %s: no script", filepath.Base(bin), sh)
			}
		}
		// Alone, a binary shows its help and exits 2.
		_, stderr, err := runCmd(t, bin)
		if exitCode(err) != 2 || !strings.Contains(stderr, "Usage:") {
			t.Errorf("%s alone: %v\n%s", filepath.Base(bin), err, stderr)
		}
	}
}

// TestAgentCommandHelp: every tether-agent command answers --help with
// exit 0, its usage line and its own flags only, -o being the one global
// flag; completion offers its commands and a command's own flags; the
// version is the same in its short form.
func TestAgentCommandHelp(t *testing.T) {
	want := map[string][]string{
		"enroll":     {"--config", "--force", "--proxy", "--proxy-ca", "--relay", "--state-dir", "--timeout", "--token", "--token-file"},
		"run":        {"--config"},
		"service":    {"--config"},
		"install":    {"--config", "--files-only"},
		"uninstall":  {"--purge"},
		"start":      {},
		"stop":       {},
		"unit":       {},
		"status":     {"--addr", "--config", "--timeout"},
		"access-log": {"--backend", "--ca", "--config", "--file", "--key", "--key-record", "--rotate-key", "--service", "--since", "--verify"},
		"version":    {"--short"},
	}
	helps := leafHelps(t, bins.agent)
	for path, flags := range want {
		help, ok := helps[path]
		if !ok {
			t.Errorf("tether-agent --help does not lead to %s", path)
			continue
		}
		delete(helps, path)
		got := slices.DeleteFunc(helpSections(help)["Flags"], func(f string) bool { return f == "--help" })
		slices.Sort(got)
		if !slices.Equal(got, flags) {
			t.Errorf("tether-agent %s --help lists %v, want %v", path, got, flags)
		}
		if g := helpSections(help)["Global Flags"]; !slices.Equal(g, []string{"--output"}) {
			t.Errorf("tether-agent %s --help: global flags %v, want --output", path, g)
		}
		if !strings.Contains(help, "Usage:\n  tether-agent "+path) {
			t.Errorf("tether-agent %s --help has no usage line:\n%s", path, help)
		}
	}
	for path := range helps {
		t.Errorf("tether-agent %s: a command this test does not know", path)
	}

	complete := func(args ...string) []string {
		var words []string
		for _, line := range strings.Split(mustRun(t, bins.agent, append([]string{"__complete"}, args...)...), "\n") {
			if w, _, _ := strings.Cut(line, "\t"); w != "" && !strings.HasPrefix(w, ":") {
				words = append(words, w)
			}
		}
		return words
	}
	if got := complete("s"); !slices.Equal(got, []string{"service", "start", "status", "stop"}) {
		t.Errorf("completion of s: %v", got)
	}
	if got := complete("enroll", "--t"); !slices.Equal(got, []string{"--timeout", "--token", "--token-file"}) {
		t.Errorf("completion of enroll --t: %v", got)
	}
	if short, long := mustRun(t, bins.agent, "version", "--short"), mustRun(t, bins.agent, "version"); short == "" || !strings.HasPrefix(long, "tether-agent "+short+"\n") {
		t.Errorf("version --short %q, version %q", short, long)
	}
}

// TestAgentEnrollSources: tether-agent enroll takes the join token from
// standard input, a file or the environment without a word, and from
// --token with a warning that it is a secret on the command line; it
// prints the agent's id, or with -o json the enrolment's facts.
func TestAgentEnrollSources(t *testing.T) {
	r := startRelay(t, relayOpts{})
	r.addTenant(t, "acme")
	tokenFile := filepath.Join(t.TempDir(), "token")
	for _, tc := range []struct {
		name    string
		fromEnv bool
		args    []string
		warn    bool
		config  bool // the state directory from an agent config's state_dir (--config)
	}{
		{"file, -o json", false, []string{"--token-file", tokenFile, "-o", "json"}, false, false},
		{"environment", true, nil, false, false},
		{"command line", false, []string{"--token", "TOKEN"}, true, false},
		{"state directory from the config, -o json", false, []string{"--token-file", tokenFile, "-o", "json"}, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			token := r.token(t, "acme")
			if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			stateDir := filepath.Join(t.TempDir(), "state")
			args := []string{"enroll", "--relay", r.agentAddr, "--state-dir", stateDir}
			if tc.config {
				config := filepath.Join(t.TempDir(), "agent.yaml")
				// Only state_dir is read: a key this version does not know is no matter.
				body := "relays: [" + r.agentAddr + "]\nstate_dir: " + stateDir + "\nservices: {}\nsetting_of_a_later_version: 1\n"
				if err := os.WriteFile(config, []byte(body), 0o600); err != nil {
					t.Fatal(err)
				}
				if _, stderr, err := runCmd(t, bins.agent, append(slices.Clone(args), "--config", config, "--token-file", tokenFile)...); exitCode(err) != 2 ||
					!strings.Contains(stderr, "--state-dir or --config, not both") {
					t.Fatalf("enroll with --state-dir and --config: %v\n%s", err, stderr)
				}
				args = []string{"enroll", "--relay", r.agentAddr, "--config", config}
			}
			for _, a := range tc.args {
				args = append(args, strings.ReplaceAll(a, "TOKEN", token))
			}
			env := []string{"TETHER_JOIN_TOKEN="} // none from the test's own environment
			if tc.fromEnv {
				env = []string{"TETHER_JOIN_TOKEN=" + token}
			}
			stdout, stderr, err := runCmdEnv(t, env, bins.agent, args...)
			if err != nil {
				t.Fatalf("enroll: %v\n%s", err, stderr)
			}
			if warned := strings.Contains(stderr, "warning: --token puts the join token on the command line"); warned != tc.warn {
				t.Errorf("warned about --token: %v, want %v:\n%s", warned, tc.warn, stderr)
			}
			if !strings.Contains(stderr, "enrolled as agent") {
				t.Errorf("stderr:\n%s", stderr)
			}
			// The access log key's fingerprint, to record.
			fp, err := agent.LogKeyFingerprint(stateDir)
			if err != nil || !strings.Contains(stderr, "access log key: "+fp+"\n") {
				t.Errorf("access log key %s (%v): not on stderr:\n%s", fp, err, stderr)
			}
			if !slices.Contains(tc.args, "json") {
				if id := strings.TrimSpace(stdout); len(id) < 8 || strings.ContainsAny(id, " \n") {
					t.Errorf("stdout %q, want the agent's id alone", stdout)
				}
				return
			}
			var got struct {
				AgentID      string    `json:"agent_id"`
				Tenant       string    `json:"tenant"`
				NotAfter     time.Time `json:"not_after"`
				StateDir     string    `json:"state_dir"`
				AccessLogKey string    `json:"access_log_key"`
			}
			if err := json.Unmarshal([]byte(stdout), &got); err != nil || got.AgentID == "" || got.Tenant != "acme" || got.StateDir != stateDir ||
				got.NotAfter.Location() != time.UTC || !got.NotAfter.After(time.Now()) || got.AccessLogKey != fp {
				t.Errorf("enroll -o json: %+v (%v)\n%s", got, err, stdout)
			}
		})
	}
}

// TestAdminCommandsRefuseAMissingDataDirectory: admin commands create no
// data directory (only serve does): a missing one, or one no relay
// initialised, is refused with how to make one, and left as it was.
func TestAdminCommandsRefuseAMissingDataDirectory(t *testing.T) {
	base := t.TempDir()
	missing := filepath.Join(base, "missing")
	empty := filepath.Join(base, "empty")
	if err := os.Mkdir(empty, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"flag", nil, []string{"tenant", "add", "acme", "--data-dir", missing}, "data directory " + missing + " does not exist"},
		{"environment", []string{"TETHER_DATA_DIR=" + missing}, []string{"token", "create", "--tenant", "acme"}, "does not exist"},
		{"empty directory", nil, []string{"--data-dir", empty, "ca", "status"}, "data directory " + empty + " holds no relay state"},
		{"operator token", nil, []string{"operator", "token", "create", "--name", "alice", "--data-dir", missing}, "does not exist"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stdout, stderr, err := runCmdEnv(t, tc.env, bins.relay, tc.args...)
			if exitCode(err) != 1 || !strings.Contains(stderr, tc.want) || !strings.Contains(stderr, "tether-relay serve --data-dir") || stdout != "" {
				t.Fatalf("exit %v, stdout %q, stderr %q; want exit 1 saying %q and how to create one", err, stdout, stderr, tc.want)
			}
		})
	}
	if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the missing data directory was created (%v)", err)
	}
	if ents, _ := os.ReadDir(empty); len(ents) != 0 {
		t.Errorf("the empty directory was written to: %v", ents)
	}
	// Commands that need no data directory do not ask for one.
	mustRun(t, bins.relay, "release", "keygen", "--out", filepath.Join(base, "keys"), "--data-dir", missing)
}

// TestLimitsPatchKeepsTheOtherLimits: tenant limits with some flags
// changes those limits only, through tether-relay on the data directory
// and through tetherctl and the admin API (PATCH), so a tenant's networks
// are not widened by a change of its stream limit; --replace and PUT
// replace them all. The old tetherctl limits form does the same.
func TestLimitsPatchKeepsTheOtherLimits(t *testing.T) {
	a := startAdminRelay(t)
	a.addTenant(t, "acme")
	type limits struct {
		MaxAgents  int      `json:"max_agents"`
		MaxStreams int      `json:"max_streams"`
		OpenRate   float64  `json:"open_rate"`
		OpenBurst  int      `json:"open_burst"`
		CIDRs      []string `json:"cidrs"`
	}
	check := func(what string, got limits, want limits) {
		t.Helper()
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: got %+v, want %+v", what, got, want)
		}
	}
	local := func(args ...string) limits {
		t.Helper()
		var l limits
		out := a.admin(t, append([]string{"tenant", "limits", "acme", "-o", "json"}, args...)...)
		if err := json.Unmarshal([]byte(out), &l); err != nil {
			t.Fatalf("tether-relay tenant limits: %v\n%s", err, out)
		}
		return l
	}
	remote := func(args ...string) limits {
		t.Helper()
		var l limits
		a.ctlJSON(t, &l, append([]string{"tenant", "limits", "acme"}, args...)...)
		return l
	}

	check("local, two limits", local("--cidrs", "10.0.0.0/8,192.168.0.0/16", "--max-agents", "3"), limits{MaxAgents: 3, CIDRs: []string{"10.0.0.0/8", "192.168.0.0/16"}})
	check("local, one more", local("--max-streams", "5"), limits{MaxAgents: 3, MaxStreams: 5, CIDRs: []string{"10.0.0.0/8", "192.168.0.0/16"}})
	check("tetherctl", remote("--open-rate", "2.5"), limits{MaxAgents: 3, MaxStreams: 5, OpenRate: 2.5, CIDRs: []string{"10.0.0.0/8", "192.168.0.0/16"}})
	check("tetherctl, the old form", func() limits {
		var l limits
		a.ctlJSON(t, &l, "limits", "acme", "--open-burst", "4")
		return l
	}(), limits{MaxAgents: 3, MaxStreams: 5, OpenRate: 2.5, OpenBurst: 4, CIDRs: []string{"10.0.0.0/8", "192.168.0.0/16"}})

	c := a.httpClient(nil)
	auth := http.Header{"Authorization": {"Bearer " + a.token}, "Content-Type": {"application/json"}}
	if st, code := a.call(t, c, "PATCH", "/api/v1/tenants/acme/limits", auth, []byte(`{"max_agents": 4, "cidrs": null}`)); st != 200 {
		t.Fatalf("PATCH limits: %d %s", st, code)
	}
	check("after PATCH", remote(), limits{MaxAgents: 4, MaxStreams: 5, OpenRate: 2.5, OpenBurst: 4, CIDRs: []string{"10.0.0.0/8", "192.168.0.0/16"}})
	for _, tc := range []struct {
		body string
		code string
	}{{`{}`, "bad_request"}, {`{"max_streams": -1}`, "bad_request"}, {`{"tenant": "acme"}`, "bad_request"}} {
		if st, code := a.call(t, c, "PATCH", "/api/v1/tenants/acme/limits", auth, []byte(tc.body)); st != 400 || code != tc.code {
			t.Errorf("PATCH %s: got %d %q, want 400 %s", tc.body, st, code, tc.code)
		}
	}
	if st, code := a.call(t, c, "PATCH", "/api/v1/tenants/nope/limits", auth, []byte(`{"max_agents": 1}`)); st != 404 {
		t.Errorf("PATCH of an unknown tenant: %d %s", st, code)
	}

	check("tetherctl --replace", remote("--replace", "--max-streams", "7"), limits{MaxStreams: 7, CIDRs: []string{}})
	check("local --replace", local("--replace", "--cidrs", "10.1.0.0/16"), limits{CIDRs: []string{"10.1.0.0/16"}})
	if st, code := a.call(t, c, "PUT", "/api/v1/tenants/acme/limits", auth, []byte(`{"max_agents": 2}`)); st != 200 {
		t.Fatalf("PUT limits: %d %s", st, code)
	}
	check("after PUT", local(), limits{MaxAgents: 2, CIDRs: []string{}})

	// Each change is audited with the resulting limits, and a patch with
	// the fields it changed.
	recs := a.audit(t, "--kind", "tenant.limits", "--limit", "20")
	if len(recs) != 8 {
		t.Fatalf("got %d tenant.limits records, want 8: %+v", len(recs), recs)
	}
	// Newest first: PUT, local --replace, tetherctl --replace, PATCH, old form, tetherctl, local, local.
	if d := recs[3].Detail; fmt.Sprint(d["changed"]) != "[max_agents]" || d["max_streams"] != float64(5) || recs[3].Actor != "operator:alice" {
		t.Errorf("audit of the PATCH: %+v", recs[3])
	}
	if d := recs[6].Detail; fmt.Sprint(d["changed"]) != "[max_streams]" || fmt.Sprint(d["cidrs"]) != "[10.0.0.0/8 192.168.0.0/16]" || recs[6].Actor != "operator" {
		t.Errorf("audit of the local change: %+v", recs[6])
	}
	if _, ok := recs[0].Detail["changed"]; ok {
		t.Errorf("audit of a replacement names changed fields: %+v", recs[0])
	}

	// A relay certificate tetherctl cannot verify is answered with the fix.
	_, stderr, err := runCmdEnv(t, []string{"TETHER_ADMIN_URL=" + a.url, "TETHER_ADMIN_TOKEN=" + a.token, "TETHER_ADMIN_CA="}, bins.ctl, "agent", "list")
	if exitCode(err) != 1 || !strings.Contains(stderr, "--ca FILE") || !strings.Contains(stderr, "tether-relay ca export --out FILE") {
		t.Errorf("tetherctl without --ca: %v\n%s", err, stderr)
	}
}

// TestLimitsListEveryTenant: tenant limits without a name lists every
// tenant, from both binaries alike, one without limits as unlimited.
func TestLimitsListEveryTenant(t *testing.T) {
	a := startAdminRelay(t)
	for _, n := range []string{"acme", "globex"} {
		a.addTenant(t, n)
	}
	a.admin(t, "tenant", "limits", "acme", "--max-streams", "5")
	type limits struct {
		Tenant     string   `json:"tenant"`
		MaxStreams int      `json:"max_streams"`
		CIDRs      []string `json:"cidrs"`
	}
	want := "[{acme 5 []} {globex 0 []}]"
	var local, remote []limits
	if err := json.Unmarshal([]byte(a.admin(t, "tenant", "limits", "-o", "json")), &local); err != nil {
		t.Fatal(err)
	}
	a.ctlJSON(t, &remote, "tenant", "limits")
	for what, got := range map[string][]limits{"tether-relay": local, "tetherctl": remote} {
		if fmt.Sprint(got) != want {
			t.Errorf("%s tenant limits -o json: got %v, want %s", what, got, want)
		}
	}
	for what, table := range map[string]string{"tether-relay": a.admin(t, "tenant", "limits"), "tetherctl": a.mustCtl(t, "tenant", "limits")} {
		lines := strings.Split(strings.TrimSpace(table), "\n")
		if len(lines) != 3 || !strings.HasPrefix(lines[2], "globex") || !strings.Contains(lines[2], "unlimited") {
			t.Errorf("%s tenant limits:\n%s\nwant a row for acme and one for globex, unlimited", what, table)
		}
	}
}

// TestSecretMessageSaysWhereItWent: backend add prints the API key on
// stdout and a message on stderr; with stdout redirected to a file, the
// message names the file rather than pointing "above".
func TestSecretMessageSaysWhereItWent(t *testing.T) {
	r := startRelay(t, relayOpts{})
	r.addTenant(t, "acme")
	keyFile := filepath.Join(t.TempDir(), "billing.key")
	out, err := os.Create(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	var stderr strings.Builder
	cmd := exec.Command(bins.relay, "backend", "add", "billing", "--allow", "acme", "--data-dir", r.dataDir)
	cmd.Stdout, cmd.Stderr = out, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("backend add: %v\n%s", err, stderr.String())
	}
	if key, err := os.ReadFile(keyFile); err != nil || len(strings.TrimSpace(string(key))) == 0 {
		t.Fatalf("the key file holds %q (%v)", key, err)
	}
	if want := "backend billing added; its API key (written to " + keyFile + ") is shown only once\n"; stderr.String() != want {
		t.Errorf("stderr: got %q, want %q", stderr.String(), want)
	}
}

// TestListingFormats: a listing in each format, from both binaries: a
// table for people, JSON and YAML with the same fields and times in UTC.
func TestListingFormats(t *testing.T) {
	a := startAdminRelay(t)
	for _, n := range []string{"acme", "globex"} {
		a.addTenant(t, n)
	}
	rfc3339UTC := regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$`)
	type tenant struct {
		Name      string `json:"name" yaml:"name"`
		CreatedAt string `json:"created_at" yaml:"created_at"`
	}
	checkTenants := func(what string, ts []tenant) {
		t.Helper()
		if len(ts) != 2 || ts[0].Name != "acme" || ts[1].Name != "globex" {
			t.Errorf("%s: got %+v, want acme and globex", what, ts)
		}
		for _, x := range ts {
			if !rfc3339UTC.MatchString(x.CreatedAt) {
				t.Errorf("%s: created_at %q is not RFC 3339 in UTC", what, x.CreatedAt)
			}
		}
	}
	// tether-relay: a list of tenants.
	var js, ys []tenant
	if err := json.Unmarshal([]byte(a.admin(t, "tenant", "list", "-o", "json")), &js); err != nil {
		t.Fatal(err)
	}
	checkTenants("tether-relay -o json", js)
	if err := yaml.Unmarshal([]byte(a.admin(t, "-o", "yaml", "tenant", "list")), &ys); err != nil {
		t.Fatal(err)
	}
	checkTenants("tether-relay -o yaml", ys)
	table := a.admin(t, "tenant", "list")
	if lines := strings.Split(table, "\n"); len(lines) != 3 || !strings.HasPrefix(lines[0], "NAME") || !strings.Contains(lines[1], "acme") || !strings.Contains(lines[1], "ago") && !strings.Contains(lines[1], "just now") {
		t.Errorf("tether-relay table:\n%s", table)
	}

	// tetherctl: the API's answer, {"tenants": [...]}, in JSON and YAML alike.
	var jr, yr struct {
		Tenants []tenant `json:"tenants" yaml:"tenants"`
	}
	a.ctlJSON(t, &jr, "tenant", "list")
	checkTenants("tetherctl -o json", jr.Tenants)
	if err := yaml.Unmarshal([]byte(a.mustCtl(t, "tenant", "list", "--output", "yaml")), &yr); err != nil {
		t.Fatal(err)
	}
	checkTenants("tetherctl -o yaml", yr.Tenants)
	if table := a.mustCtl(t, "tenant", "list"); !strings.HasPrefix(table, "TENANT") || !strings.Contains(table, "globex") {
		t.Errorf("tetherctl table:\n%s", table)
	}
	// The old form is the same listing.
	var old struct{ Tenants []tenant }
	a.ctlJSON(t, &old, "tenants")
	checkTenants("tetherctl tenants -o json", old.Tenants)
}

// TestServeConfigFile: serve's settings come from flags, then the
// environment, then the config file, then defaults; an unknown key is
// refused with its line; the file is watched: the log level changes live
// and changed settings that need a restart are logged by key; a
// plain-text front door beyond loopback is warned about.
// TestServeConfigFileThroughLink: a config file that is a symbolic link
// into another directory is reloaded when the file there is edited in
// place, as one in the link's own directory is.
func TestServeConfigFileThroughLink(t *testing.T) {
	real, links := t.TempDir(), t.TempDir()
	target, link := filepath.Join(real, "relay.yaml"), filepath.Join(links, "relay.yaml")
	base := "data_dir: " + filepath.Join(real, "data") + "\nagent_listen: 127.0.0.1:0\nsocks_listen: \"off\"\nconnect_listen: 127.0.0.1:0\n" +
		"log_format: json\ntransports: [tcp]\n"
	if err := os.WriteFile(target, []byte(base+"log_level: info\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	r := startEnv(t, "tether-relay serve --config LINK", nil, bins.relay, "serve", "--config", link)
	r.waitOutput(`"msg":"watching the config file"`, 20*time.Second)
	r.waitOutput(`"msg":"relay serving"`, 20*time.Second)
	if err := os.WriteFile(target, []byte(base+"log_level: debug\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r.waitOutput(`"msg":"config file setting applied","key":"log_level","was":"info","now":"debug"`, 20*time.Second)
	if err := r.stop(20 * time.Second); err != nil {
		t.Errorf("relay after SIGTERM: %v", err)
	}
}

func TestServeConfigFile(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "relay.yaml")
	write := func(body string) {
		t.Helper()
		tmp := cfgPath + ".tmp"
		if err := os.WriteFile(tmp, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, cfgPath); err != nil { // as editors and Kubernetes do
			t.Fatal(err)
		}
	}

	// Strict: every problem, each with its line, and nothing starts.
	write("data_dir: " + filepath.Join(dir, "data") + "\nheartbeat: soon\nagent_lisen: 127.0.0.1:0\n")
	_, stderr, err := runCmdEnv(t, []string{"TETHER_CONFIG=" + cfgPath}, bins.relay, "serve")
	if exitCode(err) != 1 || !strings.Contains(stderr, `relay.yaml:3: unknown key "agent_lisen"; did you mean "agent_listen"?`) ||
		!strings.Contains(stderr, `relay.yaml:2: heartbeat "soon": want a duration`) || !strings.Contains(stderr, "2 invalid settings") {
		t.Fatalf("serve with an unknown key: %v\n%s", err, stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "data")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a refused configuration created the data directory (%v)", err)
	}

	// Precedence, seen in the addresses the relay binds (port 0 on
	// loopback addresses of its own): socks_listen from the flag over the
	// environment and the file, connect_listen from the environment over
	// the file, metrics_listen from the file.
	base := "data_dir: " + filepath.Join(dir, "data") + "\nagent_listen: 127.0.0.1:0\nconnect_listen: 127.0.0.2:0\n" +
		"metrics_listen: 127.0.0.2:0\nlog_format: json\ntransports: [tcp]\n"
	write(base + "socks_listen: 127.0.0.2:0\nlog_level: info\nheartbeat: 2s\n")
	env := []string{"TETHER_SOCKS_LISTEN=127.0.0.3:0", "TETHER_CONNECT_LISTEN=127.0.0.3:0", "TETHER_HEARTBEAT="}
	r := startEnv(t, "tether-relay serve --config", env, bins.relay, "serve", "--config", cfgPath, "--socks-listen", "0.0.0.0:0")
	r.waitOutput(`"msg":"watching the config file"`, 20*time.Second)
	r.waitOutput(`"msg":"relay serving"`, 20*time.Second)
	var serving struct {
		SOCKS   string `json:"socks_addr"`
		Connect string `json:"connect_addr"`
		Metrics string `json:"metrics_addr"`
		QUIC    bool   `json:"quic"`
	}
	for _, line := range strings.Split(r.out.String(), "\n") {
		if strings.Contains(line, `"msg":"relay serving"`) {
			json.Unmarshal([]byte(line), &serving)
		}
	}
	if !strings.HasPrefix(serving.SOCKS, "0.0.0.0:") && !strings.HasPrefix(serving.SOCKS, "[::]:") || !strings.HasPrefix(serving.Connect, "127.0.0.3:") ||
		!strings.HasPrefix(serving.Metrics, "127.0.0.2:") || serving.QUIC {
		t.Fatalf("relay serving %+v; want SOCKS5 from the flag, CONNECT from the environment, metrics and transports from the file", serving)
	}
	// The SOCKS5 door listens beyond loopback: warned; CONNECT does not.
	out := r.out.String()
	if !strings.Contains(out, `"msg":"a plain-text front door listens beyond loopback`) || !strings.Contains(out, `"door":"SOCKS5"`) || strings.Contains(out, `"door":"HTTP CONNECT"`) {
		t.Errorf("front door warnings:\n%s", out)
	}

	// Live: the log level applies; a changed heartbeat needs a restart and
	// says so; socks_listen changes in the file but the flag wins.
	write(base + "socks_listen: 127.0.0.4:0\nlog_level: debug\nheartbeat: 3s\n")
	r.waitOutput(`"msg":"config file reloaded"`, 20*time.Second)
	out = r.out.String()
	if !strings.Contains(out, `"msg":"config file setting applied","key":"log_level","was":"info","now":"debug"`) ||
		!strings.Contains(out, `"msg":"config file changes a setting that takes effect at the next restart","key":"heartbeat","running":"2s","file":"3s"`) ||
		!strings.Contains(out, `"applied":["log_level"],"restart_needed":["heartbeat"]`) {
		t.Fatalf("reload log:\n%s", out)
	}
	// The file's socks_listen changed, but the flag gives it: no change.
	if strings.Contains(out, `"key":"socks_listen"`) {
		t.Errorf("a setting the flag gives was reported as changed by the file:\n%s", out)
	}

	// At warn, info lines stop: the next reload's summary is not logged,
	// its restart warning is; a file with a problem changes nothing.
	write(base + "socks_listen: 127.0.0.4:0\nlog_level: warn\nheartbeat: 4s\n")
	waitCount(t, r, `"running":"2s","file":"4s"`, 1, 20*time.Second)
	write(base + "socks_listen: 127.0.0.4:0\nlog_level: warn\nheartbeat: 5s\nbogus: 1\n")
	waitCount(t, r, `"msg":"config file not reloaded; the relay keeps its settings"`, 1, 20*time.Second)
	write(base + "socks_listen: 127.0.0.4:0\nlog_level: warn\nheartbeat: 6s\n")
	waitCount(t, r, `"running":"2s","file":"6s"`, 1, 20*time.Second)
	out = r.out.String()
	if n := strings.Count(out, `"msg":"config file reloaded"`); n != 1 {
		t.Errorf("%d reload summaries, want 1 (the later ones at level warn)", n)
	}
	if !strings.Contains(out, `relay.yaml:10: unknown key \"bogus\"`) {
		t.Errorf("the refused file's problem is not logged with its line:\n%s", out)
	}
	if err := r.stop(20 * time.Second); err != nil {
		t.Errorf("relay after SIGTERM: %v", err)
	}
}
