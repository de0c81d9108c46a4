package test

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/client"
)

// replaceAgentConfig replaces the agent's config file, by renaming a new
// file over it (as editors and configuration tools do) or in place.
func replaceAgentConfig(t *testing.T, a *agentProc, body string, rename bool) {
	t.Helper()
	if !rename {
		if err := os.WriteFile(a.config, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return
	}
	tmp := filepath.Join(filepath.Dir(a.config), ".agent.yaml.tmp")
	if err := os.WriteFile(tmp, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, a.config); err != nil {
		t.Fatal(err)
	}
}

func TestAgentReloadsItsServices(t *testing.T) {
	r := startRelay(t, relayOpts{})
	r.addTenant(t, "acme")
	db := labelledService(t, "acme", "db")
	api := labelledService(t, "acme", "api")
	echoAddr := tcpService(t, echo)
	a := startAgent(t, r, "acme", agentOpts{services: map[string]string{"db": db.addr, "echo": echoAddr}})
	d := r.backend(t, "billing", "acme")
	head := fmt.Sprintf("relays: [%q]\nstate_dir: %q\nreconnect: {initial: 100ms, max: 1s}\nlog: {level: debug, format: json}\n", r.agentAddr, a.stateDir)

	// A stream held open to a service that stays.
	held := waitDial(t, d, "echo.acme.tether:7", 10*time.Second)
	defer held.Close()
	echoOnce(t, held, "before")
	if body, err := fetch(d, "db.acme.tether:80"); err != nil || body != "tenant=acme service=db" {
		t.Fatalf("db before reload: %q, %v", body, err)
	}

	// Rename-replace: api added, db removed, echo kept.
	replaceAgentConfig(t, a, head+fmt.Sprintf("services:\n  echo: %q\n  api: %q\n", echoAddr, api.addr), true)
	waitFetch(t, d, "api.acme.tether:80", "tenant=acme service=api")
	if _, err := fetch(d, "db.acme.tether:80"); !errors.Is(err, client.ErrUnknownService) {
		t.Fatalf("removed service: got %v, want unknown_service", err)
	}
	echoOnce(t, held, "after the reload") // the stream in flight was not dropped

	// An invalid config changes nothing and is reported in the log.
	replaceAgentConfig(t, a, head+"services:\n  api: {address: nowhere}\n", false)
	a.waitOutput("config file has errors; keeping the services in use", 10*time.Second)
	if body, err := fetch(d, "api.acme.tether:80"); err != nil || body != "tenant=acme service=api" {
		t.Fatalf("after an invalid config: %q, %v", body, err)
	}

	// Removing a service while a stream to it is open: new streams are
	// refused at once, and the open one is cut (the tenant's config no
	// longer allows it).
	replaceAgentConfig(t, a, head+fmt.Sprintf("services:\n  api: %q\n", api.addr), false)
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := d.Dial("tcp", "echo.acme.tether:7")
		if err == nil {
			c.Close()
		}
		if errors.Is(err, client.ErrUnknownService) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("echo still reachable after its removal: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	held.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(held, "cut\n"); err == nil {
		if line, err := readLine(held); err == nil {
			t.Fatalf("the stream to the removed service still echoes (%q), want it cut", line)
		}
	}
	a.waitOutput(`"msg":"stream cut: the agent's config no longer allows it"`, 10*time.Second)
	if !strings.Contains(a.out.String(), `"removed":["echo"]`) {
		t.Errorf("the agent did not log the removal of echo")
	}

	// A setting that needs a restart is named.
	replaceAgentConfig(t, a, head+"transport: tcp\n"+fmt.Sprintf("services:\n  api: %q\n", api.addr), true)
	a.waitOutput("config changes that take effect at the next restart", 10*time.Second)
}
