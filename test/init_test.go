package test

import (
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/client"
	"github.com/tetherhq/tether/test/internal/e2e"
)

// initResult is tether-relay init -o json.
type initResult struct {
	Created       bool   `json:"created"`
	DataDir       string `json:"data_dir"`
	TrustDomain   string `json:"trust_domain"`
	CAFingerprint string `json:"ca_fingerprint"`
}

func runInit(t *testing.T, env []string, args ...string) (initResult, string) {
	t.Helper()
	stdout, stderr, err := runCmdEnv(t, env, bins.relay, append([]string{"init", "-o", "json"}, args...)...)
	if err != nil {
		t.Fatalf("tether-relay init %v: %v\n%s", args, err, stderr)
	}
	var res initResult
	if err := json.Unmarshal([]byte(stdout), &res); err != nil {
		t.Fatalf("tether-relay init -o json: %v\n%s", err, stdout)
	}
	return res, stderr
}

// TestInitBeforeFirstServe: tether-relay init makes a data directory
// that admin commands accept before any relay served on it; the tenant,
// join token and backend made then work once the relay serves (an agent
// enrols with the token, a backend reaches its service with the key),
// with the CA init made. init again changes nothing; asked for another
// trust domain it fails; a bad trust domain creates nothing; and serve
// told another trust domain than its CA's says so.
func TestInitBeforeFirstServe(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "data")

	// Before init the admin commands refuse it, and say what to run.
	_, stderr, err := runCmd(t, bins.relay, "tenant", "add", "acme", "--data-dir", dir)
	if exitCode(err) != 1 || !strings.Contains(stderr, "tether-relay init --data-dir "+dir) {
		t.Fatalf("tenant add before init: exit %v\n%s", err, stderr)
	}

	// The trust domain comes from the config file, as serve's does.
	cfg := filepath.Join(base, "relay.yaml")
	if err := os.WriteFile(cfg, []byte("data_dir: "+dir+"\ntrust_domain: acme-saas.example\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	made, stderr := runInit(t, nil, "--config", cfg)
	if !made.Created || made.DataDir != dir || made.TrustDomain != "acme-saas.example" || !strings.HasPrefix(made.CAFingerprint, "sha256:") ||
		!strings.Contains(stderr, "initialised "+dir) {
		t.Fatalf("init: %+v\n%s", made, stderr)
	}

	// Admin commands work on it now.
	admin := func(args ...string) string {
		t.Helper()
		return mustRun(t, bins.relay, append(args, "--data-dir", dir)...)
	}
	admin("tenant", "add", "acme")
	token := admin("token", "create", "--tenant", "acme")
	key := admin("backend", "add", "billing", "--tenants", "acme")
	if audit := admin("audit", "-o", "json"); !strings.Contains(audit, `"kind":"relay.init"`) || !strings.Contains(audit, made.CAFingerprint) {
		t.Errorf("the audit trail does not show the init:\n%s", audit)
	}

	// Again: nothing changes, whatever the trust domain's default.
	again, stderr := runInit(t, nil, "--data-dir", dir)
	if again.Created || again.CAFingerprint != made.CAFingerprint || again.TrustDomain != made.TrustDomain || !strings.Contains(stderr, "initialised already") {
		t.Fatalf("init again: %+v\n%s", again, stderr)
	}
	// Another trust domain, asked for: refused, and the CA kept.
	for _, tc := range []struct {
		env  []string
		args []string
	}{
		{nil, []string{"--data-dir", dir, "--trust-domain", "other.example"}},
		{[]string{"TETHER_TRUST_DOMAIN=other.example"}, []string{"--data-dir", dir}},
	} {
		stdout, stderr, err := runCmdEnv(t, tc.env, bins.relay, append([]string{"init"}, tc.args...)...)
		if exitCode(err) != 1 || stdout != "" || !strings.Contains(stderr, `trust domain "acme-saas.example", not "other.example"`) {
			t.Fatalf("init %v %v on a CA of another trust domain: exit %v, stdout %q\n%s", tc.env, tc.args, err, stdout, stderr)
		}
	}
	// A bad trust domain: refused before anything is made.
	fresh := filepath.Join(base, "fresh")
	if _, stderr, err := runCmd(t, bins.relay, "init", "--data-dir", fresh, "--trust-domain", "Not A Domain"); exitCode(err) != 1 ||
		!strings.Contains(stderr, "lower-case letters") {
		t.Fatalf("init with a bad trust domain: exit %v\n%s", err, stderr)
	}
	if _, err := os.Stat(fresh); !os.IsNotExist(err) {
		t.Errorf("a refused init created %s (%v)", fresh, err)
	}

	// The relay serves what init made (told a trust domain its CA does
	// not have, it says so and serves its CA's) ...
	r := e2e.StartRelay(t, bins.relay, e2e.RelayOptions{Heartbeat: time.Second, Transports: "tcp",
		Extra: []string{"--data-dir", dir, "--trust-domain", "other.example"}})
	out := r.Output()
	if !strings.Contains(out, `"trust_domain":"acme-saas.example"`) || !strings.Contains(out, `"ca_fingerprint":"`+made.CAFingerprint+`"`) {
		t.Errorf("the relay does not serve init's CA:\n%s", out)
	}
	if !strings.Contains(out, "the trust domain setting applies only to a new CA") || !strings.Contains(out, `"configured":"other.example"`) {
		t.Errorf("serve told another trust domain than its CA's did not say so:\n%s", out)
	}
	// ... and the token and the key made before it served work.
	svc := tcpService(t, echo)
	stateDir, id := e2e.Enroll(t, nil, bins.agent, r.AgentAddr, token)
	runAgent(t, stateDir, id, r.AgentAddr, agentOpts{transport: "tcp", services: map[string]string{"echo": svc}})
	d := &client.Dialer{Relay: r.ConnectAddr, Backend: "billing", APIKey: key, Timeout: 20 * time.Second}
	c := waitDial(t, d, "echo.acme.tether:0", 20*time.Second)
	defer c.Close()
	if _, err := c.Write([]byte("through init's relay\n")); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	got := make([]byte, len("through init's relay\n"))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "through init's relay\n" {
		t.Fatalf("echo through the relay: %q, %v", got, err)
	}
}
