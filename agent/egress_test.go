package agent

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
)

// The agent reaching test relays (testrelay_test.go) through an HTTP
// CONNECT proxy (proxy_test.go), as from a tenant's network whose only way
// out is its proxy: the relays have names only the proxy resolves
// (*.invalid), so nothing reaches them but through it.

// runProxiedAgent runs an agent enrolled with ca's root whose log goes to
// the test's log and to the returned buffer; it stops when the test ends.
func runProxiedAgent(t *testing.T, ca *testCA, cfg Config) (*Agent, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	h := slog.NewTextHandler(multiWriter{testLogWriter{t}, logs}, &slog.HandlerOptions{Level: slog.LevelDebug})
	cfg.Logger = slog.New(h)
	if cfg.Reconnect == (Backoff{}) {
		cfg.Reconnect = Backoff{Initial: 100 * time.Millisecond, Max: time.Second}
	}
	cfg.NoFileWatch = true
	a := enrolledWith(t, cfg, ca.root, ca.root)
	runUntilCleanup(t, a)
	return a, logs
}

type multiWriter []interface{ Write([]byte) (int, error) }

func (m multiWriter) Write(p []byte) (int, error) {
	for _, w := range m {
		w.Write(p)
	}
	return len(p), nil
}

// proxiedName is the name, only the proxy resolves, under which p reaches
// the relay listening at addr.
func proxiedName(p *connectProxy, name, addr string) string {
	_, port, _ := net.SplitHostPort(addr)
	target := net.JoinHostPort(name, port)
	p.setRoute(target, addr)
	return target
}

// statusJSON is what tether-agent status reads from the agent.
func statusJSON(t *testing.T, a *Agent) string {
	t.Helper()
	b, err := json.Marshal(a.Status())
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// lastErrors is the last error of each slot of a.
func lastErrors(a *Agent) string {
	var out []string
	for _, s := range a.Status().Sessions {
		if s.LastError != "" {
			out = append(out, s.LastError)
		}
	}
	return strings.Join(out, "\n")
}

// TestEgressThroughProxy: an agent in auto mode whose proxy needs a
// password with characters that must be percent-encoded reaches its relay
// through the proxy only: no QUIC attempt, the status and the relay's
// hello say why TCP, a stream crosses, and no log or status line shows the
// password. The relay restarts (at another address, the same name): the
// agent comes back through the proxy.
func TestEgressThroughProxy(t *testing.T) {
	ca := newTestCA(t)
	const user, pass = "svc@corp", "p@ss:w/rd%?#1"
	p := startConnectProxy(t, "ok", user, pass, nil)
	r1 := newTestRelay(t, ca, "r1", "127.0.0.1", false)
	relay := proxiedName(p, "relay.invalid", r1.addr)
	echo := echoService(t)
	proxyURL := "http://svc%40corp:p%40ss%3Aw%2Frd%25%3F%231@" + p.addr
	a, logs := runProxiedAgent(t, ca, Config{Relays: []string{relay}, RelayConnections: 1, Proxy: proxyURL,
		Services: map[string]Service{"echo": {Address: echo}}})

	waitFor(t, 10*time.Second, "a session to r1 through the proxy", func() error {
		if len(r1.open()) != 1 {
			return fmt.Errorf("r1 has %d sessions; agent: %s", len(r1.open()), lastErrors(a))
		}
		return nil
	})
	c := onlyOpen(t, r1)
	wantWhy := "auto: QUIC is unavailable through an HTTP proxy; through HTTP proxy " + p.addr
	if !strings.Contains(c.hello.TransportWhy, wantWhy) {
		t.Errorf("hello's transport_why %q, want %q", c.hello.TransportWhy, wantWhy)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := c.openStream(ctx, "echo")
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(st, "through the proxy"); err != nil {
		t.Fatal(err)
	}
	st.Close()
	if s := a.Status().Sessions[0]; s.Transport != TransportTCP || s.TransportWhy != wantWhy {
		t.Errorf("status: transport %q (%q), want tcp (%q)", s.Transport, s.TransportWhy, wantWhy)
	}

	// The relay stops: the proxy cannot reach it, and says so (502),
	// which the agent reports and retries.
	r1.kill()
	want502 := "refused CONNECT to " + relay + ": 502 Bad Gateway (the proxy could not reach the relay)"
	waitFor(t, 10*time.Second, "the proxy's 502 in the status", func() error {
		if e := lastErrors(a); !strings.Contains(e, want502) {
			return fmt.Errorf("last error %q", e)
		}
		return nil
	})
	if strings.Contains(logs.String(), "level=ERROR msg=\"cannot connect to relay\"") {
		t.Error("a 502 is logged as an error, as a refusal no retry can fix")
	}
	// It restarts: its successor answers under the same name.
	r2 := newTestRelay(t, ca, "r2", "127.0.0.1", false)
	p.setRoute(relay, r2.addr)
	waitFor(t, 10*time.Second, "a session to the restarted relay through the proxy", func() error {
		if len(r2.open()) != 1 {
			return fmt.Errorf("r2 has %d sessions; agent: %s", len(r2.open()), lastErrors(a))
		}
		return nil
	})
	if why := onlyOpen(t, r2).hello.TransportWhy; !strings.Contains(why, wantWhy) {
		t.Errorf("after the restart: transport_why %q, want %q", why, wantWhy)
	}
	if n := strings.Count(strings.Join(mustSeen(p), " "), relay); n < 2 {
		t.Errorf("proxy saw %d CONNECTs to %s, want one per connection", n, relay)
	}

	out := logs.String() + statusJSON(t, a)
	for _, leak := range []string{pass, "p@ss", "w/rd", "p%40ss", "%3Aw%2Frd"} {
		if strings.Contains(out, leak) {
			t.Errorf("the log or status shows the proxy password (%q)", leak)
		}
	}
	if strings.Contains(out, "QUIC to relay failed") || strings.Contains(out, "transport=quic") {
		t.Error("the agent tried QUIC although the relay is behind the proxy")
	}
	if !strings.Contains(out, "QUIC is unavailable through an HTTP proxy") {
		t.Error("the agent did not say why it skipped QUIC")
	}
	// QUIC is never used: its UDP buffers are not the operator's concern.
	if strings.Contains(out, "QUIC UDP socket buffer") {
		t.Errorf("the agent logged QUIC's UDP buffers although every relay is behind the proxy:\n%s", out)
	}
	// The password goes to an http:// proxy in clear: said once.
	if n := strings.Count(out, "password travel unencrypted"); n != 1 {
		t.Errorf("%d warnings that the proxy's credentials travel unencrypted, want 1:\n%s", n, out)
	}
}

func mustSeen(p *connectProxy) []string {
	c, _ := p.seen()
	return c
}

// TestEgressClusterThroughProxy: the relay reached through the proxy sends
// the cluster's list, with names only the proxy resolves; the agent's
// second connection goes to the other relay through the proxy too.
func TestEgressClusterThroughProxy(t *testing.T) {
	ca := newTestCA(t)
	p := startConnectProxy(t, "ok", "agent", "pw", nil)
	r1 := newTestRelay(t, ca, "r1", "127.0.0.1", true)
	r2 := newTestRelay(t, ca, "r2", "127.0.0.1", true)
	n1 := proxiedName(p, "r1.invalid", r1.addr)
	n2 := proxiedName(p, "r2.invalid", r2.addr)
	list := infos(r1, r2)
	list[0].Addr, list[1].Addr = n1, n2
	setLists(list, r1, r2)
	a, _ := runProxiedAgent(t, ca, Config{Relays: []string{n1}, RelayConnections: 2, Proxy: "http://agent:pw@" + p.addr})
	waitDistinct(t, a, 2, 10*time.Second, anyRelay)
	connects := strings.Join(mustSeen(p), " ")
	if !strings.Contains(connects, n2) {
		t.Fatalf("the proxy saw CONNECT %s, want one to the listed relay %s", connects, n2)
	}
	for _, r := range []*testRelay{r1, r2} {
		for _, c := range r.open() {
			if !strings.Contains(c.hello.TransportWhy, "through HTTP proxy "+p.addr) {
				t.Errorf("relay %s: transport_why %q", r.id, c.hello.TransportWhy)
			}
		}
	}
}

// TestEgressProxyAuthRefused: a wrong proxy password is an error naming
// the proxy (password hidden) and the 407, in the log and the status, and
// the agent retries slowly, not in a loop.
func TestEgressProxyAuthRefused(t *testing.T) {
	ca := newTestCA(t)
	p := startConnectProxy(t, "ok", "agent", "right-pw", nil)
	r := newTestRelay(t, ca, "r1", "127.0.0.1", false)
	relay := proxiedName(p, "relay.invalid", r.addr)
	a, logs := runProxiedAgent(t, ca, Config{Relays: []string{relay}, RelayConnections: 1, Proxy: "http://agent:wrong-pw@" + p.addr})
	want := "proxy http://agent:xxxxx@" + p.addr + " refused CONNECT to " + relay + ": 407 Proxy Authentication Required (the proxy did not accept the user name and password in the proxy URL)"
	waitFor(t, 10*time.Second, "the 407 in the status", func() error {
		if e := lastErrors(a); !strings.Contains(e, want) {
			return fmt.Errorf("last error %q", e)
		}
		return nil
	})
	start := time.Now()
	before := len(mustSeen(p))
	time.Sleep(3 * time.Second)
	n := len(mustSeen(p)) - before
	// reconnect.max is 1s: a refusal that retrying soon cannot fix waits
	// 0.5 to 1 s, so at most 6 attempts in 3 s; the backoff's first
	// steps alone would allow about 30.
	if n > 7 {
		t.Errorf("%d CONNECTs in %v after a 407: a hot loop", n, time.Since(start))
	}
	out := logs.String() + statusJSON(t, a)
	if strings.Contains(out, "wrong-pw") {
		t.Error("the log or status shows the proxy password")
	}
	if !strings.Contains(logs.String(), "level=ERROR msg=\"cannot connect to relay\"") {
		t.Error("the 407 is not logged as an error")
	}
	if len(r.sessions()) != 0 {
		t.Error("the relay saw a session")
	}
}

// TestEgressProxyClosesTunnel: a proxy that answers CONNECT with 200 and
// then closes the tunnel (some answer before they reach the relay, then
// fail to): the error names the proxy, since "EOF" alone does not say
// whether the relay or the proxy closed.
func TestEgressProxyClosesTunnel(t *testing.T) {
	ca := newTestCA(t)
	p := startConnectProxy(t, "close200", "", "", nil)
	r := newTestRelay(t, ca, "r1", "127.0.0.1", false)
	relay := proxiedName(p, "relay.invalid", r.addr)
	a, _ := runProxiedAgent(t, ca, Config{Relays: []string{relay}, RelayConnections: 1, Proxy: "http://agent:pw@" + p.addr})
	want := "through HTTP proxy http://agent:xxxxx@" + p.addr
	waitFor(t, 10*time.Second, "an error naming the proxy", func() error {
		if e := lastErrors(a); !strings.Contains(e, want) || !strings.Contains(e, "closed") {
			return fmt.Errorf("last error %q, want it to say %q and that the tunnel was closed", e, want)
		}
		return nil
	})
}

// TestEgressTLSInspectingProxy: a proxy that inspects TLS answers the
// agent's handshake with a certificate of its own CA. The agent must not
// send the operator to re-enrol (as for a relay CA it no longer trusts):
// the error names the proxy and says it intercepts TLS.
func TestEgressTLSInspectingProxy(t *testing.T) {
	ca := newTestCA(t)
	cert, _ := selfSigned(t)
	p := startConnectProxy(t, "mitm", "", "", nil)
	p.mitmConf = &tls.Config{Certificates: []tls.Certificate{cert}}
	r := newTestRelay(t, ca, "r1", "127.0.0.1", false)
	relay := proxiedName(p, "relay.invalid", r.addr)
	a, _ := runProxiedAgent(t, ca, Config{Relays: []string{relay}, RelayConnections: 1, Proxy: "http://" + p.addr})
	waitFor(t, 10*time.Second, "an error saying the proxy intercepts TLS", func() error {
		e := lastErrors(a)
		if !strings.Contains(e, "through HTTP proxy http://"+p.addr) || !strings.Contains(e, "inspect") {
			return fmt.Errorf("last error %q", e)
		}
		if i := strings.Index(e, "enrol it again"); i >= 0 && i < strings.Index(e, "inspect") {
			return fmt.Errorf("last error %q sends the operator to re-enrol first", e)
		}
		return nil
	})
}

// TestEgressProxyFromEnvironment: with no proxy in the config, the agent
// takes HTTPS_PROXY (credentials included) from its environment, and
// NO_PROXY naming the relay keeps it off the proxy.
func TestEgressProxyFromEnvironment(t *testing.T) {
	ca := newTestCA(t)
	p := startConnectProxy(t, "ok", "agent", "env-secret", nil)
	r := newTestRelay(t, ca, "r1", "127.0.0.1", false)
	relay := proxiedName(p, "relay.invalid", r.addr)
	for _, k := range []string{"HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy"} {
		t.Setenv(k, "")
	}
	t.Setenv("HTTPS_PROXY", "http://agent:env-secret@"+p.addr)
	a, logs := runProxiedAgent(t, ca, Config{Relays: []string{relay}, RelayConnections: 1})
	waitFor(t, 10*time.Second, "a session through the proxy of HTTPS_PROXY", func() error {
		if len(r.open()) != 1 {
			return fmt.Errorf("no session; agent: %s", lastErrors(a))
		}
		return nil
	})
	if out := logs.String() + statusJSON(t, a); strings.Contains(out, "env-secret") || !strings.Contains(out, "proxy_from=HTTPS_PROXY") {
		t.Errorf("the log should name HTTPS_PROXY as the proxy's source, without the password:\n%s", out)
	}
}

// clearProxyEnv empties the proxy variables of the environment for the
// test.
func clearProxyEnv(t *testing.T) {
	for _, k := range []string{"HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy"} {
		t.Setenv(k, "")
	}
}

// TestEgressUnusableEnvProxyExempt: HTTPS_PROXY names a proxy the agent
// cannot use (SOCKS), but NO_PROXY exempts the only relay: the agent
// starts, reaches the relay directly (QUIC included: its UDP buffers are
// logged), and warns once, naming the variable and why, without the
// password. With a relay not exempt, New still refuses the proxy.
func TestEgressUnusableEnvProxyExempt(t *testing.T) {
	ca := newTestCA(t)
	r := newTestRelay(t, ca, "r1", "127.0.0.1", false)
	clearProxyEnv(t)
	t.Setenv("HTTPS_PROXY", "socks5://agent:env-secret@socks.corp:1080")
	t.Setenv("NO_PROXY", "127.0.0.1")
	a, logs := runProxiedAgent(t, ca, Config{Relays: []string{r.addr}, RelayConnections: 1})
	waitFor(t, 10*time.Second, "a direct session", func() error {
		if len(r.open()) != 1 {
			return fmt.Errorf("no session; agent: %s", lastErrors(a))
		}
		return nil
	})
	out := logs.String()
	const warn = "ignoring the HTTP proxy of the environment"
	if n := strings.Count(out, warn); n != 1 || !strings.Contains(out, "variable=HTTPS_PROXY") || !strings.Contains(out, `proxy scheme \"socks5\"`) {
		t.Errorf("want one warning %q naming HTTPS_PROXY and the socks5 scheme, got %d:\n%s", warn, n, out)
	}
	if strings.Contains(out, "env-secret") {
		t.Errorf("the log shows the proxy's password:\n%s", out)
	}
	if !strings.Contains(out, "QUIC UDP socket buffer") {
		t.Errorf("auto mode with a direct relay: QUIC's UDP buffers not logged:\n%s", out)
	}

	t.Setenv("NO_PROXY", "")
	cfg := Config{Relays: []string{"relay.example.com:7443"}, StateDir: a.cfg.StateDir, Services: map[string]Service{}, Logger: slog.New(slog.DiscardHandler)}
	_, err := New(cfg)
	if err == nil || !strings.Contains(err.Error(), `agent config: HTTPS_PROXY: proxy scheme "socks5"`) || strings.Contains(err.Error(), "env-secret") {
		t.Errorf("relay behind the unusable proxy: New: %v, want the proxy's error without the password", err)
	}
}

// TestProxyClearCredentialsWarning: the warning that the proxy's
// credentials travel unencrypted is for an http:// proxy with credentials
// only, and never shows the password.
func TestProxyClearCredentialsWarning(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	clearProxyEnv(t)
	for _, tc := range []struct {
		proxy, env string
		want       bool
	}{
		{proxy: "http://agent:s3cret@proxy.corp:3128", want: true},
		{env: "http://agent:s3cret@proxy.corp:3128", want: true},
		{proxy: "proxy.corp:3128"},
		{proxy: "http://proxy.corp:3128"},
		{proxy: "https://agent:s3cret@proxy.corp:443"},
		{env: "https://agent:s3cret@proxy.corp:443"},
		{proxy: ProxyDirect, env: "http://agent:s3cret@proxy.corp:3128"},
	} {
		t.Setenv("HTTPS_PROXY", tc.env)
		var logged syncBuffer
		a := enrolledWith(t, Config{Relays: []string{"relay.example.com:7443"}, Proxy: tc.proxy, Services: map[string]Service{},
			Logger: slog.New(slog.NewTextHandler(&logged, nil))}, root, root)
		a.logEgress()
		out := logged.String()
		if n := strings.Count(out, "password travel unencrypted"); n != map[bool]int{true: 1}[tc.want] {
			t.Errorf("proxy %q, HTTPS_PROXY %q: %d warnings about unencrypted credentials, want %v:\n%s", tc.proxy, tc.env, n, tc.want, out)
		}
		if tc.want && !strings.Contains(out, "https://") {
			t.Errorf("proxy %q, HTTPS_PROXY %q: the warning does not suggest an https:// proxy URL:\n%s", tc.proxy, tc.env, out)
		}
		if strings.Contains(out, "s3cret") {
			t.Errorf("proxy %q, HTTPS_PROXY %q: the log shows the password:\n%s", tc.proxy, tc.env, out)
		}
	}
}

// TestEnrolThroughTLSInspectingProxy: at enrolment too, a certificate
// that came back through the proxy and is not from the CA the join token
// pins is said to be, most likely, the proxy's.
func TestEnrolThroughTLSInspectingProxy(t *testing.T) {
	ca := newTestCA(t)
	cert, _ := selfSigned(t)
	p := startConnectProxy(t, "mitm", "agent", "enrol-secret", nil)
	p.mitmConf = &tls.Config{Certificates: []tls.Certificate{cert}}
	r := newTestRelay(t, ca, "r1", "127.0.0.1", false)
	relay := proxiedName(p, "relay.invalid", r.addr)
	tok := protocol.JoinToken{CAFingerprint: protocol.Fingerprint(ca.root.cert.Raw)}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := Enroll(ctx, EnrollOptions{Relay: relay, Token: tok.String(), StateDir: t.TempDir(), Proxy: "http://agent:enrol-secret@" + p.addr})
	if err == nil {
		t.Fatal("enrolment through a TLS-inspecting proxy succeeded")
	}
	e := err.Error()
	if !strings.Contains(e, "through HTTP proxy http://agent:xxxxx@"+p.addr) || !strings.Contains(e, "inspect") || strings.Contains(e, "enrol-secret") {
		t.Fatalf("got %q, want an error naming the proxy (without its password) and saying it may inspect TLS", e)
	}
	if i := strings.Index(e, "not the relay that issued the token"); i >= 0 && i < strings.Index(e, "inspect") {
		t.Fatalf("got %q: the token is blamed first", e)
	}
}

// An untrusted certificate through a proxy is still an untrusted relay:
// retried at the slow pace of refusals, and QUIC is not blamed for it.
func TestInspectedErrorIsUntrustedRelay(t *testing.T) {
	u, err := parseProxyURL("http://agent:secret@proxy.corp:3128")
	if err != nil {
		t.Fatal(err)
	}
	err = throughProxy(u, fmt.Errorf("tls handshake: %w", &untrustedRelayError{errors.New("x509: certificate signed by unknown authority")}))
	if !isUntrustedRelay(err) || !isPermanent(err) {
		t.Fatalf("%v: not an untrusted relay, or not permanent", err)
	}
	if e := err.Error(); !strings.Contains(e, "http://agent:xxxxx@proxy.corp:3128") || !strings.Contains(e, "x509: certificate signed by unknown authority") || strings.Contains(e, "secret") {
		t.Fatalf("got %q", e)
	}
}
