package test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/relay/client"
)

// socksConnect performs a SOCKS5 CONNECT by hand and returns the reply
// code (0 = success), so tests can check the exact code the relay sent.
func socksConnect(t *testing.T, addr, user, pass, host string) byte {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	msg := []byte{5, 1, 2, 1, byte(len(user))}
	msg = append(msg, user...)
	msg = append(msg, byte(len(pass)))
	msg = append(msg, pass...)
	msg = append(msg, 5, 1, 0, 3, byte(len(host)))
	msg = append(msg, host...)
	msg = append(msg, 0, 80)
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	var resp [2]byte
	if _, err := io.ReadFull(c, resp[:]); err != nil || resp != [2]byte{5, 2} {
		t.Fatalf("SOCKS5 method selection: %v %v", resp, err)
	}
	if _, err := io.ReadFull(c, resp[:]); err != nil {
		t.Fatalf("SOCKS5 auth status: %v", err)
	}
	if resp[1] != 0 {
		return 0xff // authentication refused
	}
	var rep [10]byte
	if _, err := io.ReadFull(c, rep[:]); err != nil {
		t.Fatalf("SOCKS5 reply: %v", err)
	}
	return rep[1]
}

// connectStatus performs an HTTP CONNECT by hand and returns the status
// code and the Tether-Error header.
func connectStatus(t *testing.T, addr, user, pass, target string) (int, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	req, _ := http.NewRequest(http.MethodConnect, "http://"+target, nil)
	req.Host = target
	if user != "" {
		req.SetBasicAuth(user, pass)
		req.Header.Set("Proxy-Authorization", req.Header.Get("Authorization"))
		req.Header.Del("Authorization")
	}
	if err := req.Write(c); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufioReader(c), req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("Tether-Error")
}

func TestRefusalsAreClearErrors(t *testing.T) {
	r := startRelay(t, relayOpts{})
	r.addTenant(t, "acme")
	r.addTenant(t, "globex")
	r.addTenant(t, "initech") // exists, but no agent ever connects
	billing := r.backend(t, "billing", "acme", "initech")
	other := r.backend(t, "other", "globex")
	ops := r.backend(t, "ops", "*")
	web := tcpService(t, echo)
	// acme's agent has only "web"; globex's agent has "db" too. A request
	// for db.acme must never reach globex's db.
	startAgent(t, r, "acme", agentOpts{transport: "quic", services: map[string]string{"web": web}})
	startAgent(t, r, "globex", agentOpts{transport: "tcp", services: map[string]string{"web": web, "db": web}})
	waitDial(t, billing, "web.acme.tether:80", 10*time.Second).Close()
	waitDial(t, other, "db.globex.tether:80", 10*time.Second).Close()

	wrongKey := &client.Dialer{Relay: r.connectAddr, Backend: "billing", APIKey: "tbk1_wrong", Timeout: 10 * time.Second}
	unknownBackend := &client.Dialer{Relay: r.connectAddr, Backend: "nobody", APIKey: billing.APIKey, Timeout: 10 * time.Second}

	cases := []struct {
		name       string
		dialer     *client.Dialer
		addr       string
		want       error
		httpStatus int
		socksCode  byte
	}{
		{"unknown tenant", ops, "web.nosuch.tether:80", client.ErrUnknownTenant, 404, 0x04},
		{"tenant not granted to the backend", billing, "web.nosuch.tether:80", client.ErrNotAllowed, 403, 0x02},
		{"unknown service", billing, "nosuch.acme.tether:80", client.ErrUnknownService, 404, 0x04},
		{"service of another tenant's agent only", billing, "db.acme.tether:5432", client.ErrUnknownService, 404, 0x04},
		{"wrong API key", wrongKey, "web.acme.tether:80", client.ErrUnauthenticated, 407, 0xff},
		{"unknown backend", unknownBackend, "web.acme.tether:80", client.ErrUnauthenticated, 407, 0xff},
		{"backend not allowed for tenant", other, "web.acme.tether:80", client.ErrNotAllowed, 403, 0x02},
		{"tenant without agent", billing, "web.initech.tether:80", client.ErrNoAgent, 503, 0x03},
		{"not a tether address", billing, "example.com:80", client.ErrBadRequest, 400, 0x04},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			c, err := tc.dialer.DialContext(ctx, "tcp", tc.addr)
			if err == nil {
				c.Close()
				t.Fatalf("Dialer: dial %s succeeded, want %v", tc.addr, tc.want)
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("Dialer: got %v, want errors.Is %v", err, tc.want)
			}
			var pe *client.Error
			if !errors.As(err, &pe) || pe.Message == "" {
				t.Fatalf("Dialer: error %v has no message", err)
			}
			status, code := connectStatus(t, r.connectAddr, tc.dialer.Backend, tc.dialer.APIKey, tc.addr)
			if status != tc.httpStatus || code != protocol.CodeOf(tc.want).String() {
				t.Fatalf("CONNECT: got %d %q, want %d %q", status, code, tc.httpStatus, protocol.CodeOf(tc.want).String())
			}
			host, _, _ := net.SplitHostPort(tc.addr)
			if got := socksConnect(t, r.socksAddr, tc.dialer.Backend, tc.dialer.APIKey, host); got != tc.socksCode {
				t.Fatalf("SOCKS5: got reply code %#x, want %#x", got, tc.socksCode)
			}
		})
	}

	t.Run("service unreachable from the agent", func(t *testing.T) {
		// A service in the allowlist whose server is down.
		l, _ := net.Listen("tcp", "127.0.0.1:0")
		dead := l.Addr().String()
		l.Close()
		startAgent(t, r, "initech", agentOpts{transport: "tcp", services: map[string]string{"down": dead}})
		c := waitDialErr(t, billing, "down.initech.tether:1", client.ErrTargetUnreachable)
		if strings.Contains(c.Error(), dead) {
			t.Fatalf("refusal leaks the tenant's internal address: %v", c)
		}
	})
}

// waitDialErr dials until the error is want (agents may still be connecting).
func waitDialErr(t *testing.T, d *client.Dialer, addr string, want error) error {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := d.Dial("tcp", addr)
		if err == nil {
			c.Close()
			t.Fatalf("dial %s succeeded, want %v", addr, want)
		}
		if errors.Is(err, want) {
			return err
		}
		if time.Now().After(deadline) {
			t.Fatalf("dial %s: got %v, want %v", addr, err, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestEnrolmentRefusals(t *testing.T) {
	r := startRelay(t, relayOpts{})
	r.addTenant(t, "acme")

	enrollErr := func(t *testing.T, relayAddr, token string) string {
		t.Helper()
		tokenFile := filepath.Join(t.TempDir(), "token")
		os.WriteFile(tokenFile, []byte(token), 0o600)
		_, stderr, err := runCmd(t, bins.agent, "enroll", "--relay", relayAddr, "--token-file", tokenFile, "--state-dir", filepath.Join(t.TempDir(), "s"))
		if err == nil {
			t.Fatalf("enrolment succeeded, want a refusal")
		}
		return stderr
	}

	t.Run("used up", func(t *testing.T) {
		tok := r.token(t, "acme", "--uses", "1")
		enroll(t, r.agentAddr, tok)
		if msg := enrollErr(t, r.agentAddr, tok); !strings.Contains(msg, "token_used_up") {
			t.Fatalf("second use: got %q, want token_used_up", msg)
		}
	})
	t.Run("multi-use counts down", func(t *testing.T) {
		tok := r.token(t, "acme", "--uses", "2")
		enroll(t, r.agentAddr, tok)
		enroll(t, r.agentAddr, tok)
		if msg := enrollErr(t, r.agentAddr, tok); !strings.Contains(msg, "token_used_up") {
			t.Fatalf("third use: got %q, want token_used_up", msg)
		}
	})
	t.Run("expired", func(t *testing.T) {
		tok := r.token(t, "acme", "--ttl", "1s")
		time.Sleep(2100 * time.Millisecond)
		if msg := enrollErr(t, r.agentAddr, tok); !strings.Contains(msg, "token_expired") {
			t.Fatalf("got %q, want token_expired", msg)
		}
	})
	t.Run("damaged", func(t *testing.T) {
		tok := r.token(t, "acme")
		bad := tok[:len(tok)-5] + "AAAAA"
		if msg := enrollErr(t, r.agentAddr, bad); !strings.Contains(msg, "CA does not match") && !strings.Contains(msg, "invalid_token") {
			t.Fatalf("got %q, want a fingerprint mismatch or invalid_token", msg)
		}
		if msg := enrollErr(t, r.agentAddr, "not-a-token"); !strings.Contains(msg, "invalid_token") {
			t.Fatalf("got %q, want invalid_token", msg)
		}
	})
	t.Run("token of another relay", func(t *testing.T) {
		// The token pins the other relay's CA: this relay is refused by the
		// agent before anything is sent.
		r2 := startRelay(t, relayOpts{})
		r2.addTenant(t, "acme")
		if msg := enrollErr(t, r.agentAddr, r2.token(t, "acme")); !strings.Contains(msg, "does not match the join token") {
			t.Fatalf("got %q, want a CA fingerprint mismatch", msg)
		}
	})
}

func TestCertificateFromAnotherCAIsRefused(t *testing.T) {
	r := startRelay(t, relayOpts{})
	r.addTenant(t, "acme")
	billing := r.backend(t, "billing", "acme")
	other := startRelay(t, relayOpts{})
	other.addTenant(t, "acme")
	// An agent enrolled with the other relay (same tenant name) tries this one.
	stateDir, _ := enroll(t, other.agentAddr, other.token(t, "acme"))
	// Make the agent trust this relay's CA, so only the relay's check of
	// the agent's certificate is in play.
	ca, err := os.ReadFile(filepath.Join(r.dataDir, "ca", "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(stateDir, "ca.crt"), ca, 0o600)
	for _, transport := range []string{"quic", "tcp"} {
		t.Run(transport, func(t *testing.T) {
			cfg := filepath.Join(t.TempDir(), "agent.yaml")
			os.WriteFile(cfg, []byte("relays: ["+strconv.Quote(r.agentAddr)+"]\nstate_dir: "+strconv.Quote(stateDir)+"\ntransport: "+transport+"\nservices: {web: \"127.0.0.1:1\"}\nreconnect: {initial: 100ms, max: 500ms}\nlog: {format: json}\n"), 0o600)
			a := start(t, "foreign agent", bins.agent, "run", "--config", cfg)
			a.waitOutput("rejected this agent's certificate", 15*time.Second)
			if transport == "tcp" {
				r.waitOutput(`"msg":"agent TLS handshake failed"`, 15*time.Second)
			}
			waitDialErr(t, billing, "web.acme.tether:80", client.ErrNoAgent)
		})
	}
}
