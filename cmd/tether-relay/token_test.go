package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tetherhq/tether/cmd/internal/cli"
)

// token create's enrolment hint names the agent port the relay serves
// on, as serve takes it (TETHER_AGENT_LISTEN, else the config file's
// agent_listen), and the default's when neither says.
func TestTokenCreateHintAgentPort(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	config := filepath.Join(dir, "relay.yaml")
	if err := os.WriteFile(config, []byte("data_dir: "+data+"\nagent_listen: \":27443\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) string {
		t.Helper()
		var stdout, stderr bytes.Buffer
		root := newRoot(cli.BuildInfo{Program: prog}, &stdout, &stderr)
		if code := cli.Execute(context.Background(), root, args, &stderr); code != cli.ExitOK {
			t.Fatalf("%v: exit %d, stderr %q", args, code, stderr.String())
		}
		return stderr.String()
	}
	run("init", "--data-dir", data)
	run("tenant", "add", "acme", "--data-dir", data)

	for _, c := range []struct {
		env  string
		args []string
		want string
	}{
		{"", []string{"--data-dir", data}, "--relay RELAY_HOST:7443 "},
		{"", []string{"--config", config}, "--relay RELAY_HOST:27443 "},
		{"10.0.0.1:17443", []string{"--config", config}, "--relay RELAY_HOST:17443 "},
	} {
		t.Setenv("TETHER_AGENT_LISTEN", c.env)
		got := run(append([]string{"token", "create", "--tenant", "acme"}, c.args...)...)
		if !strings.Contains(got, "enrol an agent with: tether-agent enroll "+c.want) {
			t.Errorf("token create %v, TETHER_AGENT_LISTEN=%q: stderr %q, want the hint with %q", c.args, c.env, got, c.want)
		}
	}
}
