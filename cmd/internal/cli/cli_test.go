package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"
)

func TestHumanForms(t *testing.T) {
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name, got, want string
	}{
		{"zero time", Since(time.Time{}, now), "-"},
		{"just now", Since(now.Add(-300*time.Millisecond), now), "just now"},
		{"seconds ago", Since(now.Add(-45*time.Second), now), "45s ago"},
		{"minutes and seconds ago", Since(now.Add(-200*time.Second), now), "3m20s ago"},
		{"minutes ago", Since(now.Add(-25*time.Minute), now), "25m ago"},
		{"hours", Since(now.Add(-(2*time.Hour + 5*time.Minute)), now), "2h5m ago"},
		{"whole hours", Since(now.Add(-2*time.Hour), now), "2h ago"},
		{"days", Since(now.Add(-(3*24+4)*time.Hour), now), "3d4h ago"},
		{"many days", Since(now.Add(-45*24*time.Hour), now), "45d ago"},
		{"years", Since(now.Add(-(365+30)*24*time.Hour), now), "1y30d ago"},
		{"to come", Since(now.Add(2*time.Hour), now), "in 2h"},
		{"when, absolute in UTC", When(time.Date(2025, 6, 1, 16, 0, 0, 0, time.FixedZone("X", 2*3600)), now), "in 2h (2025-06-01 14:00 UTC)"},
		{"timestamp", Timestamp(time.Date(2025, 6, 1, 14, 0, 1, 5e6, time.FixedZone("X", 2*3600))), "2025-06-01T12:00:01.005Z"},
		{"latency µs", Latency(850 * time.Microsecond), "850µs"},
		{"latency ms", Latency(1234 * time.Microsecond), "1.23ms"},
		{"latency s", Latency(12300 * time.Millisecond), "12.3s"},
		{"latency zero", Latency(0), "-"},
		{"bytes", Bytes(512), "512 B"},
		{"KiB", Bytes(1536), "1.5 KiB"},
		{"MiB", Bytes(12_900_000), "12.3 MiB"},
		{"GiB just under 1024", Bytes(1023 << 30), "1023 GiB"},
		{"limit", Limit(0), "unlimited"},
		{"limit set", Limit(5), "5"},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, tc.got, tc.want)
		}
	}
}

// ParseBytes reads sizes with IEC and SI units and refuses what is not
// one.
func TestParseBytes(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
	}{
		{"0", 0}, {"4096", 4096}, {"10MiB", 10 << 20}, {"10M", 10 << 20}, {"10 mib", 10 << 20},
		{"1.5GiB", 3 << 29}, {"512KiB", 512 << 10}, {"10MB", 10_000_000}, {"2B", 2},
	} {
		got, err := ParseBytes(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{"", "-1", "MiB", "10XB", "1e30", "1.2.3MiB", "99999999TiB"} {
		if got, err := ParseBytes(in); err == nil {
			t.Errorf("ParseBytes(%q) = %d, want an error", in, got)
		}
	}
	var z Size
	if err := z.Set("10MiB"); err != nil || z.String() != "10MiB" || Rate(int64(z)) != "10 MiB/s" || Rate(0) != "unlimited" {
		t.Errorf("Size 10MiB: %q, %v, rate %q", z.String(), err, Rate(int64(z)))
	}
}

// Print keeps JSON's field order in YAML, makes times UTC and leaves
// other strings alone.
func TestPrintFormats(t *testing.T) {
	v := struct {
		Name  string    `json:"name"`
		At    time.Time `json:"at"`
		Note  string    `json:"note"`
		Count int       `json:"count"`
		Rate  float64   `json:"rate"`
		Tags  []string  `json:"tags"`
		Off   bool      `json:"off"`
		None  *int      `json:"none"`
	}{"acme", time.Date(2025, 6, 1, 16, 0, 0, 0, time.FixedZone("X", 2*3600)), "true", 3, 0.5, []string{}, false, nil}

	var js bytes.Buffer
	if err := Print(&js, JSON, v, nil); err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	if err := json.Unmarshal(js.Bytes(), &back); err != nil {
		t.Fatalf("json output does not parse: %v\n%s", err, js.String())
	}
	if back["at"] != "2025-06-01T14:00:00Z" || back["note"] != "true" || back["count"] != float64(3) {
		t.Errorf("json: got %v", back)
	}
	if i, j := strings.Index(js.String(), `"name"`), strings.Index(js.String(), `"at"`); i < 0 || j < i {
		t.Errorf("json: fields out of order:\n%s", js.String())
	}

	var ys bytes.Buffer
	if err := Print(&ys, YAML, v, nil); err != nil {
		t.Fatal(err)
	}
	want := "name: acme\nat: \"2025-06-01T14:00:00Z\"\nnote: \"true\"\ncount: 3\nrate: 0.5\ntags: []\noff: false\nnone: null\n"
	if ys.String() != want {
		t.Errorf("yaml: got\n%s\nwant\n%s", ys.String(), want)
	}
	var yback map[string]any
	if err := yaml.Unmarshal(ys.Bytes(), &yback); err != nil || yback["note"] != "true" || yback["count"] != 3 {
		t.Errorf("yaml does not read back as written: %v, %v", yback, err)
	}

	var tbl bytes.Buffer
	if err := Print(&tbl, Table, v, func(w io.Writer) error { return WriteTable(w, []string{"NAME", "NOTE"}, [][]string{{"acme", ""}}) }); err != nil {
		t.Fatal(err)
	}
	if tbl.String() != "NAME  NOTE\nacme  -\n" {
		t.Errorf("table: got %q", tbl.String())
	}

	// Raw JSON (an API's answer) is taken as it is.
	js.Reset()
	if err := Print(&js, JSON, json.RawMessage(`{"b":1,"a":"2025-06-01T16:00:00+02:00"}`), nil); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(strings.Fields(js.String()), ""); got != `{"b":1,"a":"2025-06-01T14:00:00Z"}` {
		t.Errorf("raw json: got %s", got)
	}
	if err := Print(&js, JSON, json.RawMessage(strings.Repeat("[", 200)+strings.Repeat("]", 200)), nil); err == nil {
		t.Error("JSON nested 200 deep was printed")
	}
}

func TestExitCodes(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{nil, ExitOK},
		{errors.New("refused"), ExitFailure},
		{Usagef("missing NAME"), ExitUsage},
		{fmt.Errorf("wrapped: %w", Usagef("x")), ExitUsage},
		{coded(3), 3},
	} {
		if got := ExitCode(tc.err); got != tc.want {
			t.Errorf("ExitCode(%v): got %d, want %d", tc.err, got, tc.want)
		}
	}
}

type coded int

func (c coded) Error() string { return "coded" }
func (c coded) ExitCode() int { return int(c) }

// A tree as the binaries build it: what Execute prints and returns.
func TestExecute(t *testing.T) {
	var ran []string
	leaf := func(use string, args cobra.PositionalArgs) *cobra.Command {
		c := &cobra.Command{Use: use, Args: args, RunE: func(cmd *cobra.Command, args []string) error {
			ran = append(ran, cmd.Name())
			if cmd.Name() == "fail" {
				return errors.New("the relay said no")
			}
			return nil
		}}
		c.Flags().String("tenant", "", "a tenant")
		return c
	}
	build := func() (*cobra.Command, *bytes.Buffer, *bytes.Buffer) {
		root := NewRoot("prog", "a program", "", BuildInfo{Program: "prog", Version: "1.2.3"})
		var out, errOut bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&errOut)
		AddOutputFlag(root.PersistentFlags())
		root.AddCommand(Group("agent", "agents", leaf("list", NoArgs), leaf("show ID", Args("ID")), leaf("fail", NoArgs)),
			UnavailableCommand("drain ID", "drain", "elsewhere only", "it needs a running relay"))
		return root, &out, &errOut
	}
	for _, tc := range []struct {
		name       string
		args       []string
		code       int
		stderr     string
		noUsage    bool
		stdoutHas  string
		ranCommand string
	}{
		{"ok", []string{"agent", "list"}, ExitOK, "", true, "", "list"},
		{"global flag before the command", []string{"-o", "json", "agent", "show", "x"}, ExitOK, "", true, "", "show"},
		{"typo of a command", []string{"agnet", "list"}, ExitUsage, `unknown command "agnet" for "prog"; did you mean "agent"?`, true, "", ""},
		{"typo of a subcommand", []string{"agent", "lst"}, ExitUsage, `did you mean "list"?`, true, "", ""},
		{"typo of a flag", []string{"agent", "list", "--tenat", "x"}, ExitUsage, "did you mean --tenant?", true, "", ""},
		{"missing argument", []string{"agent", "show"}, ExitUsage, "agent show needs ID", true, "", ""},
		{"extra argument", []string{"agent", "list", "x"}, ExitUsage, `agent list takes no arguments (got "x")`, true, "", ""},
		{"bad output format", []string{"agent", "list", "-o", "xml"}, ExitUsage, "want table, json or yaml", true, "", ""},
		{"failure", []string{"agent", "fail"}, ExitFailure, "prog: the relay said no\n", true, "", "fail"},
		{"unavailable", []string{"drain", "x", "--whatever"}, ExitFailure, "drain is not available here: it needs a running relay", true, "", ""},
		{"group alone", []string{"agent"}, ExitUsage, "Usage:", false, "", ""},
		{"help", []string{"agent", "show", "--help"}, ExitOK, "", true, "--tenant", ""},
		{"version", []string{"version", "--short"}, ExitOK, "", true, "1.2.3", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ran = nil
			root, out, errOut := build()
			code := Execute(context.Background(), root, tc.args, errOut)
			if code != tc.code {
				t.Errorf("exit %d, want %d; stderr %q", code, tc.code, errOut.String())
			}
			if !strings.Contains(errOut.String(), tc.stderr) {
				t.Errorf("stderr %q lacks %q", errOut.String(), tc.stderr)
			}
			if tc.noUsage && strings.Contains(errOut.String()+out.String(), "Usage:") && tc.stdoutHas == "" {
				t.Errorf("usage printed:\n%s%s", out.String(), errOut.String())
			}
			if !strings.Contains(out.String(), tc.stdoutHas) {
				t.Errorf("stdout %q lacks %q", out.String(), tc.stdoutHas)
			}
			if got := strings.Join(ran, ","); got != tc.ranCommand {
				t.Errorf("ran %q, want %q", got, tc.ranCommand)
			}
		})
	}
}

// An error marked Reported is not printed again, and exits with its code.
func TestExecuteReported(t *testing.T) {
	for _, tc := range []struct {
		name   string
		err    error
		code   int
		stderr string
	}{
		{"reported, with a code", Reported(coded(3)), 3, ""},
		{"reported, wrapped", fmt.Errorf("run: %w", Reported(coded(3))), 3, ""},
		{"reported, no code", Reported(errors.New("logged")), ExitFailure, ""},
		{"not reported", coded(3), 3, "prog: coded\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := NewRoot("prog", "a program", "", BuildInfo{Program: "prog"})
			root.AddCommand(&cobra.Command{Use: "run", RunE: func(*cobra.Command, []string) error { return tc.err }})
			var errOut bytes.Buffer
			root.SetErr(&errOut)
			if code := Execute(context.Background(), root, []string{"run"}, &errOut); code != tc.code || errOut.String() != tc.stderr {
				t.Errorf("exit %d, stderr %q; want %d, %q", code, errOut.String(), tc.code, tc.stderr)
			}
		})
	}
	if Reported(nil) != nil {
		t.Error("Reported(nil) is not nil")
	}
}

// -o with aliases takes them for their formats, and the formats; OutputOf
// reads it.
func TestOutputFlagAliases(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want Format
		code int
	}{
		{nil, Table, ExitOK},
		{[]string{"-o", "text"}, Table, ExitOK},
		{[]string{"-o", "json"}, JSON, ExitOK},
		{[]string{"--output=yaml"}, YAML, ExitOK},
		{[]string{"-o", "xml"}, "", ExitUsage},
	} {
		root := NewRoot("prog", "a program", "", BuildInfo{Program: "prog"})
		AddOutputFlagAliases(root.PersistentFlags(), map[string]Format{"text": Table})
		var got Format
		root.AddCommand(&cobra.Command{Use: "show", RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			got, err = OutputOf(cmd)
			return err
		}})
		var errOut bytes.Buffer
		root.SetErr(&errOut)
		if code := Execute(context.Background(), root, append([]string{"show"}, tc.args...), &errOut); code != tc.code || got != tc.want {
			t.Errorf("%q: exit %d, format %q; want %d, %q (%s)", tc.args, code, got, tc.code, tc.want, errOut.String())
		}
	}
}

// YAMLItem's items, written one after another, read as one list, fields
// in order and times in UTC.
func TestYAMLItem(t *testing.T) {
	var buf bytes.Buffer
	for _, v := range []any{
		json.RawMessage(`{"seq":1,"time":"2025-06-01T16:00:00+02:00","note":"true","nested":{"a":[1,2]}}`),
		struct {
			Seq  int    `json:"seq"`
			Note string `json:"note"`
		}{2, "second"},
	} {
		if err := YAMLItem(&buf, v); err != nil {
			t.Fatal(err)
		}
	}
	want := "- seq: 1\n  time: \"2025-06-01T14:00:00Z\"\n  note: \"true\"\n  nested:\n    a:\n      - 1\n      - 2\n- seq: 2\n  note: second\n"
	if buf.String() != want {
		t.Errorf("got\n%s\nwant\n%s", buf.String(), want)
	}
	var back []map[string]any
	if err := yaml.Unmarshal(buf.Bytes(), &back); err != nil || len(back) != 2 || back[1]["note"] != "second" {
		t.Errorf("the items do not read back as a list: %v, %v", back, err)
	}
}

// With CommandTyposBeforeFlags, a mistyped command followed by flags is
// an unknown command with suggestions, not an unknown flag; flags of a
// known command are not affected.
func TestCommandTyposBeforeFlags(t *testing.T) {
	for _, tc := range []struct {
		args   []string
		stderr string
	}{
		{[]string{"agnet", "list", "--tenant", "x"}, `unknown command "agnet" for "prog"; did you mean "agent"?`},
		{[]string{"agent", "lst", "--tenant", "x"}, `unknown command "lst" for "prog agent"; did you mean "list"?`},
		{[]string{"agent", "list", "--tenat", "x"}, "unknown flag: --tenat; did you mean --tenant?"},
		{[]string{"--tenant", "x", "agent"}, "unknown flag: --tenant"},
	} {
		root := NewRoot("prog", "a program", "", BuildInfo{Program: "prog"})
		list := &cobra.Command{Use: "list", RunE: func(*cobra.Command, []string) error { return nil }}
		list.Flags().String("tenant", "", "a tenant")
		root.AddCommand(Group("agent", "agents", list))
		CommandTyposBeforeFlags(root)
		var errOut bytes.Buffer
		root.SetErr(&errOut)
		if code := Execute(context.Background(), root, tc.args, &errOut); code != ExitUsage || !strings.Contains(errOut.String(), tc.stderr) {
			t.Errorf("%q: exit %d, stderr %q; want %d, %q", tc.args, code, errOut.String(), ExitUsage, tc.stderr)
		}
	}
}

func TestPrintable(t *testing.T) {
	for in, want := range map[string]string{
		"backend:billing":  "backend:billing",
		"dienst-ü 日本 \\n":  "dienst-ü 日本 \\n",
		"a\nb\tc\r":        `a\nb\tc\r`,
		"\x1b[8mhidden":    `\x1b[8mhidden`,
		"x\u0085y\u2028z":  `x\u0085y\u2028z`,
		"\u202eevil":       `\u202eevil`,
		"bad\xff\xfebytes": `bad\xff\xfebytes`,
		"\x7f":             `\x7f`,
	} {
		if got := Printable(in); got != want {
			t.Errorf("Printable(%q) = %q, want %q", in, got, want)
		}
	}
}

// A secret's message says where it went: a file by its name, a pipe as
// standard output.
func TestSecretWent(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "billing.key"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got, want := SecretWent(f), "(written to "+f.Name()+")"; got != want {
		t.Errorf("a file: got %q, want %q", got, want)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if got, want := SecretWent(w), "(on standard output)"; got != want {
		t.Errorf("a pipe: got %q, want %q", got, want)
	}
	if got, want := SecretWent(io.Discard), "(on standard output)"; got != want {
		t.Errorf("a writer: got %q, want %q", got, want)
	}
}

// Tables and fields print text that agents and relays chose (a hostname,
// a version, a config or dial error, an audit detail) escaped as
// Printable does: an agent whose hostname holds a newline and tabs must
// not add a row of its own to tetherctl agent list, and one holding an
// escape sequence must not reach the operator's terminal (set its title,
// write its clipboard, hide what follows).
func TestTablesPrintHostileTextEscaped(t *testing.T) {
	hostile := "db1\nup\tacme\tforged-agent\x1b]52;c;ZWNobyBoaQ==\x07\x1b[8m\u202e"
	var table, fields strings.Builder
	if err := WriteTable(&table, []string{"AGENT", "HOSTNAME"}, [][]string{{"a1", hostile}}); err != nil {
		t.Fatal(err)
	}
	if err := WriteFields(&fields, [][2]string{{"agent", "a1"}, {"hostname", hostile}}); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		out   string
		lines int
	}{"table": {table.String(), 2}, "fields": {fields.String(), 2}} {
		if n := strings.Count(tc.out, "\n"); n != tc.lines {
			t.Errorf("%s: %d lines, want %d (one per row):\n%s", name, n, tc.lines, tc.out)
		}
		for _, r := range strings.TrimSuffix(tc.out, "\n") {
			if r != '\n' && unprintable(r) {
				t.Errorf("%s: prints %U raw: %q", name, r, tc.out)
				break
			}
		}
		if want := Printable(hostile); !strings.Contains(tc.out, want) {
			t.Errorf("%s: %q does not show the hostname as %q", name, tc.out, want)
		}
	}
}
