package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/tetherhq/tether/cmd/internal/cli"
	"github.com/tetherhq/tether/relay"
)

var update = flag.Bool("update", false, "rewrite README.md's table of serve settings")

// Every flag of serve is a setting (and so a config key and an
// environment variable) and every setting a flag.
func TestEverySettingIsAFlag(t *testing.T) {
	root := newRoot(cli.BuildInfo{Program: prog}, io.Discard, io.Discard)
	serve, _, err := root.Find([]string{"serve"})
	if err != nil {
		t.Fatal(err)
	}
	var flags []string
	serve.InheritedFlags().VisitAll(func(f *pflag.Flag) {
		if slices.Contains([]string{"data-dir", "store", "ca-kek-file"}, f.Name) {
			flags = append(flags, f.Name)
		}
	})
	serve.LocalNonPersistentFlags().VisitAll(func(f *pflag.Flag) { flags = append(flags, f.Name) })
	var names []string
	for _, s := range serveSettings() {
		names = append(names, s.name)
	}
	slices.Sort(flags)
	slices.Sort(names)
	if !slices.Equal(flags, names) {
		t.Fatalf("serve's flags and settings differ:\nflags    %v\nsettings %v", flags, names)
	}
}

// No setting's environment variable is one that tetherctl or tether-agent
// reads: a shell set up for those must not configure the relay.
func TestEnvironmentVariablesAreTheRelays(t *testing.T) {
	others := []string{"TETHER_ADMIN_URL", "TETHER_ADMIN_TOKEN", "TETHER_ADMIN_TOKEN_FILE", "TETHER_ADMIN_CA", "TETHER_ADMIN_CERT", "TETHER_ADMIN_KEY",
		"TETHER_RELAY", "TETHER_BACKEND", "TETHER_API_KEY", "TETHER_API_KEY_FILE", "TETHER_BEARER_TOKEN", "TETHER_BEARER_TOKEN_FILE",
		"TETHER_CERT_DIR", "TETHER_RELAY_CA", "TETHER_JOIN_TOKEN", "TETHER_UPDATE_TRIAL", "TETHER_CONFIG"}
	seen := map[string]string{}
	for _, s := range serveSettings() {
		v := s.envVar()
		if slices.Contains(others, v) {
			t.Errorf("%s's variable %s is another command's", s.name, v)
		}
		if prev, ok := seen[v]; ok {
			t.Errorf("%s and %s share the variable %s", prev, s.name, v)
		}
		seen[v] = s.name
	}
}

const (
	readmeBegin = "<!-- serve settings: generated from cmd/tether-relay/settings.go by go test ./cmd/tether-relay -run TestREADMESettings -update -->\n"
	readmeEnd   = "<!-- end of serve settings -->\n"
)

// referenceTable is README's table of serve settings.
func referenceTable(settings []*setting) string {
	var b strings.Builder
	b.WriteString("| config key | flag | environment | default | meaning |\n| --- | --- | --- | --- | --- |\n")
	for _, s := range settings {
		def := "none"
		if s.def != "" {
			def = "`" + s.def + "`"
		}
		doc := s.doc
		if doc == "" {
			doc = s.usage
		}
		fmt.Fprintf(&b, "| `%s` | `--%s` | `%s` | %s | %s |\n", s.key(), s.name, s.envVar(), def, strings.ReplaceAll(doc, "|", `\|`))
	}
	return b.String()
}

// README documents every setting, as the code defines it: its table is
// generated from serveSettings (-update rewrites it).
func TestREADMESettings(t *testing.T) {
	const path = "../../README.md"
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	readme := string(raw)
	i, j := strings.Index(readme, readmeBegin), strings.Index(readme, readmeEnd)
	if i < 0 || j < i {
		t.Fatalf("README.md lacks the markers of the serve settings table:\n%s...\n%s", readmeBegin, readmeEnd)
	}
	want := referenceTable(serveSettings())
	got := readme[i+len(readmeBegin) : j]
	if got == want {
		return
	}
	if *update {
		if err := os.WriteFile(path, []byte(readme[:i+len(readmeBegin)]+want+readme[j:]), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Fatalf("README.md's table of serve settings is not the one the code defines; run go test ./cmd/tether-relay -run TestREADMESettings -update\ngot:\n%s\nwant:\n%s", got, want)
}

func TestParseConfig(t *testing.T) {
	settings := serveSettings()
	for _, tc := range []struct {
		name, file string
		want       map[string]string // key: text
		errs       []string          // each in the error
	}{
		{"empty", "", map[string]string{}, nil},
		{"comments only", "# nothing\n", map[string]string{}, nil},
		{"values", "agent_listen: \":7444\"\nheartbeat: 5s\nmax_handshakes: 64\ntransports: [quic, tcp]\n",
			map[string]string{"agent_listen": ":7444", "heartbeat": "5s", "max_handshakes": "64", "transports": "quic,tcp"}, nil},
		{"unknown key, named with its line", "heartbeat: 5s\nagent_lisen: :1\n", nil, []string{`relay.yaml:2: unknown key "agent_lisen"; did you mean "agent_listen"?`}},
		{"flag name instead of key", "agent-listen: :1\n", nil, []string{`relay.yaml:1: unknown key "agent-listen"; did you mean "agent_listen"?`}},
		{"twice", "heartbeat: 5s\nheartbeat: 6s\n", nil, []string{"relay.yaml:2: heartbeat is given twice (first on line 1)"}},
		{"list where one value goes", "heartbeat: [5s]\n", nil, []string{"relay.yaml:1: heartbeat: want a single value"}},
		{"no value", "heartbeat:\n", nil, []string{"relay.yaml:1: heartbeat: no value"}},
		{"nested", "oidc:\n  issuer: x\n", nil, []string{`relay.yaml:1: unknown key "oidc"`}},
		{"every problem", "a: 1\nb: 2\n", nil, []string{`relay.yaml:1: unknown key "a"`, `relay.yaml:2: unknown key "b"`}},
		{"not a mapping", "- a\n", nil, []string{"relay.yaml:1: want settings"}},
		{"not YAML", "a: [\n", nil, []string{"config file relay.yaml: yaml:"}},
		{"two documents", "heartbeat: 5s\n---\nheartbeat: 6s\n", nil, []string{"more than one YAML document"}},
		{"forwards", "forwards:\n  - listen: 127.0.0.1:15432\n    target: db.acme\n    backend: billing\n  - 127.0.0.1:18080=api.acme@billing\n",
			map[string]string{"forwards": "127.0.0.1:15432=db.acme@billing,127.0.0.1:18080=api.acme@billing"}, nil},
		{"forward with an unknown key", "forwards:\n  - listen: 127.0.0.1:1\n    target: db.acme\n    backnd: billing\n", nil,
			[]string{`line 4: unknown key "backnd" in a forward`}},
		{"forward without a backend", "forwards:\n  - listen: 127.0.0.1:1\n    target: db.acme\n", nil, []string{"line 2: the forward has no backend"}},
		{"forward not a mapping", "forwards:\n  - [a, b]\n", nil, []string{"line 2: want a forward"}},
		{"forward with a comma", "forwards:\n  - {listen: \"127.0.0.1:1\", target: \"db.acme,x\", backend: b}\n", nil, []string{"hold no comma"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cf, err := parseConfig("relay.yaml", []byte(tc.file), settings)
			if len(tc.errs) > 0 {
				if err == nil {
					t.Fatalf("parsed %+v, want an error", cf)
				}
				for _, e := range tc.errs {
					if !strings.Contains(err.Error(), e) {
						t.Errorf("error %q lacks %q", err, e)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			for k, v := range cf.values {
				got[k] = v.text
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

// A flag wins over the environment, which wins over the file, which wins
// over the default; every problem, whatever its source, is reported
// together.
func TestResolvePrecedence(t *testing.T) {
	settings := serveSettings()
	file, err := parseConfig("relay.yaml", []byte("heartbeat: 1s\nidle_timeout: 2s\ndrain_timeout: 3s\n"), settings)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"TETHER_IDLE_TIMEOUT": "20s", "TETHER_DRAIN_TIMEOUT": "30s", "TETHER_HEARTBEAT": ""}
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	addSettingFlags(fs, settings)
	if err := fs.Parse([]string{"--drain-timeout", "300s"}); err != nil {
		t.Fatal(err)
	}
	o, from, err := resolve(settings, fs, func(k string) string { return env[k] }, file, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		got   time.Duration
		want  time.Duration
		where string
	}{
		{"heartbeat", o.relay.HeartbeatInterval, time.Second, "relay.yaml:1: heartbeat"}, // an empty variable is unset
		{"idle-timeout", o.relay.IdleTimeout, 20 * time.Second, "TETHER_IDLE_TIMEOUT"},
		{"drain-timeout", o.relay.DrainTimeout, 300 * time.Second, "--drain-timeout"},
		{"stream-open-timeout", o.relay.StreamOpenTimeout, 15 * time.Second, "default"},
	} {
		if tc.got != tc.want || from[tc.name].where != tc.where {
			t.Errorf("%s: got %v from %s, want %v from %s", tc.name, tc.got, from[tc.name].where, tc.want, tc.where)
		}
	}

	file, fileErr := parseConfig("relay.yaml", []byte("heartbeat: soon\nbogus: 1\n"), settings)
	env = map[string]string{"TETHER_MAX_HANDSHAKES": "-1"}
	fs = pflag.NewFlagSet("serve", pflag.ContinueOnError)
	addSettingFlags(fs, settings)
	fs.Parse([]string{"--log-level", "loud"})
	_, _, err = resolve(settings, fs, func(k string) string { return env[k] }, file, fileErr)
	var ps problems
	if !errors.As(err, &ps) || len(ps) != 4 || ps.ExitCode() != cli.ExitUsage {
		t.Fatalf("got %v, want 4 problems, a flag's among them", err)
	}
	for _, want := range []string{`relay.yaml:2: unknown key "bogus"`, `relay.yaml:1: heartbeat "soon": want a duration`,
		`TETHER_MAX_HANDSHAKES "-1": must not be negative`, `--log-level "loud": want debug, info, warn or error`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%v\nlacks %q", err, want)
		}
	}
}

// --forward is repeatable; its items, from any source, are checked with
// every problem reported.
func TestForwardSetting(t *testing.T) {
	settings := serveSettings()
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	addSettingFlags(fs, settings)
	if err := fs.Parse([]string{"--forward", "127.0.0.1:15432=db.acme@billing", "--forward", "10.1.0.5:18080=api.acme.tether:80@reports"}); err != nil {
		t.Fatal(err)
	}
	o, _, err := resolve(settings, fs, func(string) string { return "" }, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(o.relay.Forwards); got != "[127.0.0.1:15432=db.acme@billing 10.1.0.5:18080=api.acme.tether:80@reports]" {
		t.Fatalf("forwards %s", got)
	}
	env := map[string]string{"TETHER_FORWARDS": "127.0.0.1:1=db.acme,nohost=db.acme@b,127.0.0.1:2=db@b"}
	_, _, err = resolve(settings, pflag.NewFlagSet("serve", pflag.ContinueOnError), func(k string) string { return env[k] }, nil, nil)
	for _, want := range []string{"names no backend", `listen address "nohost" is not host:port`, `target "db": want SERVICE.TENANT`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("TETHER_FORWARDS with bad items: %v, want it to say %q", err, want)
		}
	}
}

func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{"", "heartbeat: 5s\n", "forwards:\n  - {listen: a, target: b, backend: c}\n  - x=y@z\n", "forwards: [[1]]\n", "transports: [quic, tcp]\n", "a: &x 1\nb: *x\n", "- 1\n", "heartbeat: {a: b}\n", "? [a]\n: 1\n"} {
		f.Add([]byte(s))
	}
	settings := serveSettings()
	f.Fuzz(func(t *testing.T, data []byte) {
		cf, err := parseConfig("f.yaml", data, settings)
		if err != nil {
			var ps problems
			if errors.As(err, &ps) && cf == nil {
				t.Fatal("problems without the file of the good keys")
			}
			return
		}
		for k := range cf.values {
			if !slices.ContainsFunc(settings, func(s *setting) bool { return s.key() == k }) {
				t.Fatalf("unknown key %q accepted", k)
			}
		}
	})
}

// max_stream_memory takes a size; by default it is left to the relay
// (half the memory); less than one stream's worst case is refused.
func TestStreamMemorySetting(t *testing.T) {
	settings := serveSettings()
	for _, tc := range []struct {
		flags []string
		want  int64
		err   string
	}{
		{nil, 0, ""},
		{[]string{"--max-stream-memory", "8GiB"}, 8 << 30, ""},
		{[]string{"--max-stream-memory", "1MiB"}, 0, "less than one stream's worst case"},
		// Under a stream forwarded to an agent over QUIC (8.5 MiB): it
		// would refuse every forwarded stream.
		{[]string{"--max-stream-memory", "7MiB"}, 0, "less than one stream's worst case"},
		{[]string{"--max-stream-memory", "8704KiB"}, 8704 << 10, ""},
		{[]string{"--max-stream-memory", "lots"}, 0, "want a number of bytes"},
	} {
		fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
		addSettingFlags(fs, settings)
		if err := fs.Parse(tc.flags); err != nil {
			t.Fatal(err)
		}
		o, _, err := resolve(settings, fs, func(string) string { return "" }, nil, nil)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%v: got %v, want an error saying %q", tc.flags, err, tc.err)
			}
			continue
		}
		if err != nil || o.relay.MaxStreamMemory != tc.want {
			t.Errorf("%v: got %d, %v; want %d", tc.flags, o.relay.MaxStreamMemory, err, tc.want)
		}
	}
}

// The checks relay.New makes of the whole configuration run with the
// others: their problems come together with those of single values, each
// naming the settings involved and where their values came from, and a
// wrong flag among them makes it a usage error (exit 2).
func TestResolveChecksTogether(t *testing.T) {
	settings := serveSettings()
	file, err := parseConfig("relay.yaml", []byte("advertise_peer: relay-1.example.com:7445\n"), settings)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"TETHER_DEBUG_LISTEN": ":6060"}
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	addSettingFlags(fs, settings)
	if err := fs.Parse([]string{"--agent-cert-lifetime", "10s", "--heartbeat", "abc"}); err != nil {
		t.Fatal(err)
	}
	_, _, err = resolve(settings, fs, func(k string) string { return env[k] }, file, nil)
	var ps problems
	if !errors.As(err, &ps) || len(ps) != 4 || ps.ExitCode() != cli.ExitUsage {
		t.Fatalf("got %v, want 4 problems and a usage error", err)
	}
	for _, want := range []string{
		`--heartbeat "abc": want a duration`,
		`--agent-cert-lifetime "10s": agent certificate lifetime 10s is shorter than 30s`,
		`TETHER_DEBUG_LISTEN ":6060": debug listen address ":6060" is not a loopback address`,
		`relay.yaml:1: advertise_peer "relay-1.example.com:7445": an advertised peer address without a peer listener`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%v\nlacks %q", err, want)
		}
	}

	// From the file and the environment alone: exit 1.
	_, _, err = resolve(settings, pflag.NewFlagSet("serve", pflag.ContinueOnError), func(k string) string { return env[k] }, file, nil)
	if !errors.As(err, &ps) || len(ps) != 2 || ps.ExitCode() != cli.ExitFailure {
		t.Fatalf("got %v, want 2 problems and a failure", err)
	}
}

// Every setting relay.Config.Check may name is one of serve's.
func TestConfigSettingsAreSettings(t *testing.T) {
	for field, names := range configSettings {
		for _, n := range names {
			if !slices.ContainsFunc(serveSettings(), func(s *setting) bool { return s.name == n }) {
				t.Errorf("field %s: %q is no setting", field, n)
			}
		}
	}
}

// store_outage_grace: 5m by default; 0 turns the grace off (a negative
// relay.Config value, since the Config's 0 is its default), shown as 0s;
// a negative value is refused.
func TestStoreOutageGraceSetting(t *testing.T) {
	settings := serveSettings()
	var s *setting
	for _, x := range settings {
		if x.name == "store-outage-grace" {
			s = x
		}
	}
	if s == nil {
		t.Fatal("no store-outage-grace setting")
	}
	for _, tc := range []struct {
		flags []string
		env   string
		want  time.Duration
		text  string
	}{
		{nil, "", relay.DefaultStoreOutageGrace, "5m"},
		{[]string{"--store-outage-grace", "0"}, "", -1, "0s"},
		{nil, "90s", 90 * time.Second, "1m30s"},
	} {
		fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
		addSettingFlags(fs, settings)
		if err := fs.Parse(tc.flags); err != nil {
			t.Fatal(err)
		}
		env := map[string]string{"TETHER_STORE_OUTAGE_GRACE": tc.env}
		o, _, err := resolve(settings, fs, func(k string) string { return env[k] }, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if o.relay.StoreOutageGrace != tc.want || s.get(&o) != tc.text {
			t.Errorf("%v %q: got %v (%q), want %v (%q)", tc.flags, tc.env, o.relay.StoreOutageGrace, s.get(&o), tc.want, tc.text)
		}
	}
	var o serveOptions
	if err := s.set(&o, "-1s"); err == nil {
		t.Error("a negative store_outage_grace was taken")
	}
}

// token_retention: 720h by default; 0 keeps join tokens (a negative
// relay.Config value, since the Config's 0 is its default), shown as 0s;
// a negative value is refused.
func TestTokenRetentionSetting(t *testing.T) {
	settings := serveSettings()
	var s *setting
	for _, x := range settings {
		if x.name == "token-retention" {
			s = x
		}
	}
	if s == nil {
		t.Fatal("no token-retention setting")
	}
	for _, tc := range []struct {
		flags []string
		env   string
		want  time.Duration
		text  string
	}{
		{nil, "", relay.DefaultTokenRetention, "720h"},
		{[]string{"--token-retention", "0"}, "", -1, "0s"},
		{nil, "168h", 168 * time.Hour, "168h"},
	} {
		fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
		addSettingFlags(fs, settings)
		if err := fs.Parse(tc.flags); err != nil {
			t.Fatal(err)
		}
		env := map[string]string{"TETHER_TOKEN_RETENTION": tc.env}
		o, _, err := resolve(settings, fs, func(k string) string { return env[k] }, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if o.relay.TokenRetention != tc.want || s.get(&o) != tc.text {
			t.Errorf("%v %q: got %v (%q), want %v (%q)", tc.flags, tc.env, o.relay.TokenRetention, s.get(&o), tc.want, tc.text)
		}
	}
	var o serveOptions
	if err := s.set(&o, "-1s"); err == nil {
		t.Error("a negative token_retention was taken")
	}
}
