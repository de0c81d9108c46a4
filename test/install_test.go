package test

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/agent"
	"github.com/tetherhq/tether/installer"
)

// downloadRelay starts a relay serving a release directory (the agent
// binary under the name scripts/release gives it, and the install script)
// on its download listener; it returns the relay and the download URL.
func downloadRelay(t *testing.T) (*relayProc, string) {
	t.Helper()
	dir := t.TempDir()
	bin, err := os.ReadFile(bins.agent)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tether-agent-linux-"+runtime.GOARCH), bin, 0o644); err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	r := startRelay(t, relayOpts{extra: []string{"--download-listen", addr, "--download-dir", dir}})
	return r, "https://" + addr
}

// installScript runs scripts/install.sh with the token in its environment.
func installScript(t *testing.T, token string, args ...string) (string, error) {
	t.Helper()
	stdout, stderr, err := runCmdEnv(t, []string{"TETHER_JOIN_TOKEN=" + token}, "sh", append([]string{"../scripts/install.sh"}, args...)...)
	return stdout + stderr, err
}

// TestInstallScriptAndServiceMode installs an agent with scripts/install.sh
// from a relay's download listener (stopping before the service manager),
// then runs the installed binary with exactly the arguments of the systemd
// unit generated for that layout, sends traffic through it, and stops it
// the way systemd does.
func TestInstallScriptAndServiceMode(t *testing.T) {
	r, dl := downloadRelay(t)
	r.addTenant(t, "acme")
	svc := tcpService(t, echo)
	d := r.backend(t, "billing", "acme")
	token := r.token(t, "acme")

	root := t.TempDir()
	out, err := installScript(t, token, "--relay", r.agentAddr, "--download", dl, "--root", root, "--no-service", "--service", "echo="+svc)
	if err != nil {
		t.Fatalf("install.sh: %v\n%s", err, out)
	}
	if !strings.Contains(out, "matches the join token") {
		t.Errorf("install.sh did not report the CA check:\n%s", out)
	}
	l := installer.LinuxLayout(root)

	// The binary is the one the relay served, the config names the relay,
	// the state directory and the service, and enrolment left an identity.
	want, _ := os.ReadFile(bins.agent)
	if got, err := os.ReadFile(l.BinaryPath); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("installed binary: %v (%d bytes, want the %d served)", err, len(got), len(want))
	}
	cfg, err := agent.LoadConfig(l.ConfigPath)
	if err != nil {
		t.Fatalf("installed config: %v", err)
	}
	if !slices.Equal(cfg.Relays, []string{r.agentAddr}) || cfg.StateDir != l.StateDir || cfg.Services["echo"].Address != svc {
		t.Errorf("config: relays %v, state %s, services %v; want [%s], %s, echo=%s", cfg.Relays, cfg.StateDir, cfg.Services, r.agentAddr, l.StateDir, svc)
	}
	if fi, err := os.Stat(filepath.Join(l.StateDir, "agent.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("agent key: %v %v", fi, err)
	}
	cfgText, _ := os.ReadFile(l.ConfigPath)
	if strings.Contains(string(cfgText), token) {
		t.Error("the config file holds the join token")
	}

	// Run it as the unit does.
	execStart := unitExecStart(t, l)
	a := start(t, "tether-agent service", execStart[0], execStart[1:]...)
	a.waitOutput(`"msg":"connected to relay"`, 30*time.Second)

	// Nothing secret on its command line or in its environment.
	for _, f := range []string{"cmdline", "environ"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", a.Pid(), f))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(b, []byte(token)) || bytes.Contains(b, []byte("tjt1_")) {
			t.Errorf("the service's %s holds a join token", f)
		}
	}

	c := waitDial(t, d, "echo.acme.tether:7", 30*time.Second)
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(c, "through the installed agent\n"); err != nil {
		t.Fatal(err)
	}
	if line, err := readLine(c); err != nil || line != "through the installed agent" {
		t.Fatalf("echo: got %q, %v", line, err)
	}
	c.Close()

	// systemd stops with SIGTERM: the agent drains and exits 0, which
	// Restart=on-failure does not restart.
	if err := a.stop(30 * time.Second); err != nil {
		t.Errorf("service mode after SIGTERM: %v, want exit status 0", err)
	}
}

// TestInstallScriptRefusesUntrustedDownloads: a token pinning another CA,
// and a server in the middle that passes on the relay's real CA but serves
// its own binary under its own certificate, both stop the script before
// anything is installed or enrolled.
func TestInstallScriptRefusesUntrustedDownloads(t *testing.T) {
	r, dl := downloadRelay(t)
	other := startRelay(t, relayOpts{})
	other.addTenant(t, "acme")
	r.addTenant(t, "acme")

	t.Run("token of another relay", func(t *testing.T) {
		root := t.TempDir()
		out, err := installScript(t, other.token(t, "acme"), "--relay", r.agentAddr, "--download", dl, "--root", root, "--no-service")
		if err == nil || !strings.Contains(out, "is not the one in the join token") {
			t.Fatalf("install.sh: %v, want a refusal naming the CA:\n%s", err, out)
		}
		checkNothingInstalled(t, root)
	})

	t.Run("tampered binary from a server in the middle", func(t *testing.T) {
		// The attacker can copy the relay's public CA certificate, but
		// not get a certificate from it.
		tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}} //nolint:gosec // fetching a public file for the attacker
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 20 * time.Second}).Get(dl + "/ca.der")
		if err != nil {
			t.Fatal(err)
		}
		caDER, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("ca.der: %v %v", resp.Status, err)
		}
		mitm := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			if req.URL.Path == "/ca.der" {
				w.Write(caDER)
				return
			}
			io.WriteString(w, "#!/bin/sh\necho owned\n")
		}))
		mitm.StartTLS()
		defer mitm.Close()
		_, port, _ := net.SplitHostPort(mitm.Listener.Addr().String())

		root := t.TempDir()
		out, err := installScript(t, r.token(t, "acme"), "--relay", r.agentAddr, "--download", "https://127.0.0.1:"+port, "--root", root, "--no-service")
		if err == nil || !strings.Contains(out, "could not download the agent") {
			t.Fatalf("install.sh: %v, want a refused download:\n%s", err, out)
		}
		if !strings.Contains(out, "matches the join token") {
			t.Errorf("the CA check should have passed (the real CA was served):\n%s", out)
		}
		checkNothingInstalled(t, root)
	})
}

// TestInstallScriptThroughProxy: on a machine whose only way out is the
// tenant's HTTP proxy (it cannot even resolve the relay's name), the
// install script, run with https_proxy set as for curl, downloads and
// enrols through the proxy and writes the proxy into the config; the
// installed agent, started as a service is (without that environment),
// then reaches the relay through the proxy.
func TestInstallScriptThroughProxy(t *testing.T) {
	r, dl := downloadRelay(t)
	r.addTenant(t, "acme")
	token := r.token(t, "acme")
	_, agentPort, _ := net.SplitHostPort(r.agentAddr)
	_, dlPort, _ := net.SplitHostPort(strings.TrimPrefix(dl, "https://"))
	relayName := net.JoinHostPort("relay.invalid", agentPort) // only the proxy resolves it
	const password = "it's-a-s3cret"
	fp := startForwardProxy(t, "agent", password, map[string]string{"relay.invalid": "127.0.0.1"})
	proxyURL := "http://agent:" + password + "@" + fp.addr // a quote, as a URL may hold one

	root := t.TempDir()
	env := []string{"TETHER_JOIN_TOKEN=" + token, "https_proxy=" + proxyURL, "HTTPS_PROXY=", "no_proxy=", "NO_PROXY=example.com"}
	stdout, stderr, err := runCmdEnv(t, env, "sh", "../scripts/install.sh", "--relay", relayName, "--download", "https://relay.invalid:"+dlPort,
		"--root", root, "--no-service")
	out := stdout + stderr
	if err != nil {
		t.Fatalf("install.sh through the proxy: %v\n%s", err, out)
	}
	if strings.Contains(out, password) {
		t.Errorf("install.sh shows the proxy password:\n%s", out)
	}
	if n := fp.tunnelsTo(relayName); n != 1 {
		t.Fatalf("proxy opened %d tunnels to %s for the enrolment, want 1 (saw %v)", n, relayName, fp.seen())
	}
	l := installer.LinuxLayout(root)
	cfg, err := agent.LoadConfig(l.ConfigPath)
	if err != nil {
		t.Fatalf("installed config: %v", err)
	}
	if cfg.Proxy != proxyURL || cfg.NoProxy != "example.com" {
		text, _ := os.ReadFile(l.ConfigPath)
		t.Fatalf("installed config has proxy %q and no_proxy %q, want %q and %q:\n%s", cfg.Proxy, cfg.NoProxy, proxyURL, "example.com", text)
	}

	// Run it as the unit does, in an environment without the proxy.
	execStart := unitExecStart(t, l)
	a := startEnv(t, "tether-agent service", proxyEnv("", ""), execStart[0], execStart[1:]...)
	a.waitOutput(`"msg":"connected to relay"`, 30*time.Second)
	if n := fp.tunnelsTo(relayName); n < 2 {
		t.Errorf("proxy opened %d tunnels to %s, want the enrolment's and the agent's", n, relayName)
	}
	a.kill()
}

// TestInstallScriptThroughHTTPSProxyCA: the tenant's proxy is https://,
// with a certificate from its private CA that the machine does not trust
// (SSL_CERT_FILE names no CA). Without --proxy-ca the script stops at its
// first download; with it, curl and the enrolment trust the CA for the
// proxy, the config records a copy of it as proxy_ca_file, and the agent,
// run as the unit runs it, reaches the relay through the proxy.
func TestInstallScriptThroughHTTPSProxyCA(t *testing.T) {
	r, dl := downloadRelay(t)
	r.addTenant(t, "acme")
	_, agentPort, _ := net.SplitHostPort(r.agentAddr)
	_, dlPort, _ := net.SplitHostPort(strings.TrimPrefix(dl, "https://"))
	relayName := net.JoinHostPort("relay.invalid", agentPort) // only the proxy resolves it
	const password = "ca-s3cret"
	fp := startForwardProxy(t, "agent", password, map[string]string{"relay.invalid": "127.0.0.1"})
	front, caFile := tlsFront(t, fp.addr)
	proxyURL := "https://agent:" + password + "@" + front
	noRoots := "SSL_CERT_FILE=" + filepath.Join(t.TempDir(), "none.pem")
	install := func(root string, extra ...string) (string, error) {
		env := []string{"TETHER_JOIN_TOKEN=" + r.token(t, "acme"), "https_proxy=" + proxyURL, "HTTPS_PROXY=", "no_proxy=", "NO_PROXY=", noRoots}
		args := append([]string{"../scripts/install.sh", "--relay", relayName, "--download", "https://relay.invalid:" + dlPort, "--root", root, "--no-service"}, extra...)
		stdout, stderr, err := runCmdEnv(t, env, "sh", args...)
		out := stdout + stderr
		if strings.Contains(out, password) {
			t.Errorf("install.sh shows the proxy password:\n%s", out)
		}
		return out, err
	}

	root := t.TempDir()
	if out, err := install(root); err == nil || !strings.Contains(out, "could not fetch the relay's CA") {
		t.Fatalf("install.sh through a proxy of an untrusted CA, without --proxy-ca: %v\n%s\nwant it to stop at the first download", err, out)
	}
	checkNothingInstalled(t, root)

	root = t.TempDir()
	out, err := install(root, "--proxy-ca", caFile)
	if err != nil {
		t.Fatalf("install.sh --proxy-ca: %v\n%s", err, out)
	}
	if n := fp.tunnelsTo(relayName); n != 1 {
		t.Fatalf("proxy opened %d tunnels to %s for the enrolment, want 1 (saw %v)", n, relayName, fp.seen())
	}
	l := installer.LinuxLayout(root)
	cfg, err := agent.LoadConfig(l.ConfigPath)
	if err != nil {
		t.Fatalf("installed config: %v", err)
	}
	want := filepath.Join(filepath.Dir(l.ConfigPath), "proxy-ca.pem")
	if cfg.Proxy != proxyURL || cfg.ProxyCAFile != want {
		text, _ := os.ReadFile(l.ConfigPath)
		t.Fatalf("installed config has proxy %q and proxy_ca_file %q, want %q and %q:\n%s", cfg.Proxy, cfg.ProxyCAFile, proxyURL, want, text)
	}
	orig, _ := os.ReadFile(caFile)
	if got, err := os.ReadFile(want); err != nil || string(got) != string(orig) {
		t.Fatalf("%s: %v, or not a copy of --proxy-ca", want, err)
	}
	if fi, err := os.Stat(want); err != nil || fi.Mode().Perm() != 0o644 {
		t.Fatalf("%s: %v, want mode 0644 (the service reads it)", want, err)
	}

	execStart := unitExecStart(t, l)
	a := startEnv(t, "tether-agent service", append(proxyEnv("", ""), noRoots), execStart[0], execStart[1:]...)
	a.waitOutput(`"msg":"connected to relay"`, 30*time.Second)
	if n := fp.tunnelsTo(relayName); n < 2 {
		t.Errorf("proxy opened %d tunnels to %s, want the enrolment's and the agent's", n, relayName)
	}
	a.kill()
}

// checkNothingInstalled fails t when a refused install left the agent's
// binary, config or state directory under root.
func checkNothingInstalled(t *testing.T, root string) {
	t.Helper()
	l := installer.LinuxLayout(root)
	for _, p := range []string{l.BinaryPath, l.ConfigPath, l.StateDir} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s exists after a refused install", p)
		}
	}
}

// unitExecStart is the command line the systemd unit of the installed
// layout l runs: the installed binary and its arguments.
func unitExecStart(t *testing.T, l installer.Layout) []string {
	t.Helper()
	unit, err := installer.SystemdUnit(l)
	if err != nil {
		t.Fatal(err)
	}
	var execStart []string
	for line := range strings.SplitSeq(unit, "\n") {
		if v, ok := strings.CutPrefix(line, "ExecStart="); ok {
			execStart = strings.Fields(v)
		}
	}
	if len(execStart) < 2 || execStart[0] != l.BinaryPath {
		t.Fatalf("ExecStart %q does not run %s", execStart, l.BinaryPath)
	}
	return execStart
}
