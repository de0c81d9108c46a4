package test

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// forwardProxy is an HTTP forward proxy serving CONNECT, as a tenant's
// corporate proxy would: it requires Basic credentials and resolves names
// of its own (hosts) that the agent's machine cannot resolve, so an agent
// told to reach such a name can only do it through the proxy.
type forwardProxy struct {
	addr       string
	user, pass string
	hosts      map[string]string // host name → address the proxy dials instead

	mu       sync.Mutex // guards connects and conns
	connects []connectRecord
	conns    map[net.Conn]bool
	wg       sync.WaitGroup
}

// connectRecord is one CONNECT request the proxy received.
type connectRecord struct {
	target string
	status int // the proxy's answer
}

func startForwardProxy(t *testing.T, user, pass string, hosts map[string]string) *forwardProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &forwardProxy{addr: ln.Addr().String(), user: user, pass: pass, hosts: hosts, conns: map[net.Conn]bool{}}
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.track(c)
			p.wg.Go(func() {
				defer c.Close()
				p.serve(c)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *forwardProxy) track(c net.Conn) {
	p.mu.Lock()
	p.conns[c] = true
	p.mu.Unlock()
}

// url is the proxy's URL with the given password.
func (p *forwardProxy) url(pass string) string {
	return fmt.Sprintf("http://%s:%s@%s", p.user, pass, p.addr)
}

// seen returns the CONNECT requests so far.
func (p *forwardProxy) seen() []connectRecord {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]connectRecord(nil), p.connects...)
}

// tunnelsTo counts the CONNECTs to target the proxy answered with 200.
func (p *forwardProxy) tunnelsTo(target string) int {
	n := 0
	for _, r := range p.seen() {
		if r.target == target && r.status == http.StatusOK {
			n++
		}
	}
	return n
}

func (p *forwardProxy) serve(c net.Conn) {
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	c.SetReadDeadline(time.Time{})
	answer := func(status int, extra string) {
		p.mu.Lock()
		p.connects = append(p.connects, connectRecord{target: req.RequestURI, status: status})
		p.mu.Unlock()
		fmt.Fprintf(c, "HTTP/1.1 %d %s\r\n%s\r\n", status, http.StatusText(status), extra)
	}
	if req.Method != http.MethodConnect {
		answer(http.StatusMethodNotAllowed, "Content-Length: 0\r\n")
		return
	}
	want := "Basic " + base64.StdEncoding.EncodeToString([]byte(p.user+":"+p.pass))
	if req.Header.Get("Proxy-Authorization") != want {
		answer(http.StatusProxyAuthRequired, "Proxy-Authenticate: Basic realm=\"corp\"\r\nContent-Length: 0\r\n")
		return
	}
	host, port, err := net.SplitHostPort(req.RequestURI)
	if err != nil {
		answer(http.StatusBadRequest, "Content-Length: 0\r\n")
		return
	}
	if h, ok := p.hosts[host]; ok {
		host = h
	}
	up, err := net.DialTimeout("tcp", net.JoinHostPort(host, port), 5*time.Second)
	if err != nil {
		answer(http.StatusBadGateway, "Content-Length: 0\r\n")
		return
	}
	p.track(up)
	defer up.Close()
	answer(http.StatusOK, "")
	p.wg.Go(func() {
		io.Copy(up, br)
		up.(*net.TCPConn).CloseWrite()
	})
	io.Copy(c, up)
	c.(*net.TCPConn).CloseWrite()
}

// proxyEnv sets the proxy variables in both spellings, so that whatever
// the machine running the tests has set does not leak in. The lower-case
// ones take precedence, so the agent names https_proxy as the source.
func proxyEnv(httpsProxy, noProxy string) []string {
	return []string{"HTTPS_PROXY=" + httpsProxy, "https_proxy=" + httpsProxy, "NO_PROXY=" + noProxy, "no_proxy=" + noProxy}
}

// writeAgentConfig writes an agent config file and returns its path.
func writeAgentConfig(t *testing.T, yaml string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestProxyEgress: the agent's machine cannot reach the relay directly
// (it cannot even resolve its name); only the tenant's proxy can. The agent
// enrols and serves through the proxy with its credentials, QUIC is
// skipped with one clear log line, a real request crosses the tunnel, and a
// wrong password is a clear error that never shows the password.
func TestProxyEgress(t *testing.T) {
	r := startRelay(t, relayOpts{})
	r.addTenant(t, "acme")
	d := r.backend(t, "billing", "acme")
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		fmt.Fprintf(w, "web says hello to %s", req.URL.Path)
	}))
	t.Cleanup(web.Close)

	_, port, _ := net.SplitHostPort(r.agentAddr)
	relayName := net.JoinHostPort("relay.invalid", port) // only the proxy resolves it
	const password = "s3cret-proxy-pw"
	fp := startForwardProxy(t, "agent", password, map[string]string{"relay.invalid": "127.0.0.1"})
	token := r.token(t, "acme")
	stateDir := filepath.Join(t.TempDir(), "state")
	enrollArgs := []string{"enroll", "--relay", relayName, "--token", token, "--state-dir", stateDir, "--timeout", "15s"}

	// Without the proxy there is no way to the relay.
	_, errOut, err := runCmdEnv(t, proxyEnv("", ""), bins.agent, enrollArgs...)
	if err == nil || !strings.Contains(errOut, "lookup relay.invalid") {
		t.Fatalf("enrolment without the proxy: %v\n%s\nwant a failure to resolve relay.invalid", err, errOut)
	}

	// A wrong password is refused by the proxy, and said so.
	_, errOut, err = runCmdEnv(t, proxyEnv(fp.url("wrong-pw"), ""), bins.agent, enrollArgs...)
	if err == nil {
		t.Fatal("enrolment with a wrong proxy password succeeded")
	}
	for _, want := range []string{"refused CONNECT to " + relayName + ": 407 Proxy Authentication Required", "did not accept the user name and password", "http://agent:xxxxx@" + fp.addr} {
		if !strings.Contains(errOut, want) {
			t.Errorf("enrolment error does not say %q:\n%s", want, errOut)
		}
	}
	if strings.Contains(errOut, "wrong-pw") {
		t.Errorf("enrolment output shows the proxy password:\n%s", errOut)
	}

	// With the right one (from the environment), enrolment works.
	_, errOut, err = runCmdEnv(t, proxyEnv(fp.url(password), ""), bins.agent, enrollArgs...)
	if err != nil {
		t.Fatalf("enrolment through the proxy: %v\n%s", err, errOut)
	}
	if !strings.Contains(errOut, "through HTTP proxy http://agent:xxxxx@"+fp.addr+" (from https_proxy)") || strings.Contains(errOut, password) {
		t.Errorf("enrolment output should name the proxy without its password:\n%s", errOut)
	}
	if n := fp.tunnelsTo(relayName); n != 1 {
		t.Fatalf("proxy opened %d tunnels to %s for the enrolment, want 1 (saw %v)", n, relayName, fp.seen())
	}

	// The agent runs with proxy: in its config, which overrides the
	// (wrong) HTTPS_PROXY in its environment. Transport auto: QUIC cannot
	// pass the proxy, so it goes straight to TCP.
	config := fmt.Sprintf("relays: [%q]\nstate_dir: %q\ntransport: auto\nconnections: 2\nproxy: %q\nreconnect: {initial: 100ms, max: 1s}\nlog: {level: debug, format: json}\nservices:\n  web: %q\n",
		relayName, stateDir, fp.url(password), web.Listener.Addr().String())
	agent := startEnv(t, "tether-agent", proxyEnv(fp.url("wrong-pw"), ""), bins.agent, "run", "--config", writeAgentConfig(t, config))
	waitCount(t, agent, `"msg":"connected to relay"`, 2, 20*time.Second)

	tr := &http.Transport{DialContext: d.DialContext}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 20 * time.Second}
	resp, err := hc.Get("http://web.acme.tether/through-the-proxy")
	if err != nil {
		t.Fatalf("request through the tunnel: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "web says hello to /through-the-proxy" {
		t.Fatalf("through the tunnel: %q", body)
	}

	out := agent.out.String()
	if n := strings.Count(out, "QUIC is unavailable through an HTTP proxy: this relay is reached over TLS over TCP through the proxy"); n != 1 {
		t.Errorf("agent said %d times that QUIC is unavailable through the proxy, want once", n)
	}
	if strings.Contains(out, `"transport":"quic"`) || strings.Contains(out, "QUIC to relay failed") {
		t.Error("agent tried QUIC although a proxy applies")
	}
	if !strings.Contains(out, `"transport_why":"auto: QUIC is unavailable through an HTTP proxy; through HTTP proxy `+fp.addr+`"`) {
		t.Error("agent's connection log does not say it connected through the proxy")
	}
	// The relay hears the same from the agent's hello.
	r.waitOutput("through HTTP proxy "+fp.addr, 5*time.Second)
	if n := fp.tunnelsTo(relayName); n < 3 {
		t.Errorf("proxy opened %d tunnels to %s, want the enrolment's and one per connection (saw %v)", n, relayName, fp.seen())
	}
	for _, o := range []string{out, r.out.String()} {
		if strings.Contains(o, password) || strings.Contains(o, "wrong-pw") {
			t.Error("a proxy password appears in the logs")
		}
	}

	// A wrong password in the config: the agent says why, as an error,
	// and keeps retrying. (The same state directory: the first agent
	// stops first, since one agent at a time holds it.)
	if err := agent.stop(20 * time.Second); err != nil {
		t.Fatalf("agent after SIGTERM: %v", err)
	}
	badConfig := strings.Replace(config, password, "wrong-pw", 1)
	bad := startEnv(t, "tether-agent (wrong proxy password)", nil, bins.agent, "run", "--config", writeAgentConfig(t, badConfig))
	bad.waitOutput("refused CONNECT to "+relayName+": 407 Proxy Authentication Required (the proxy did not accept the user name and password in the proxy URL)", 20*time.Second)
	bad.waitOutput(`"level":"ERROR","msg":"cannot connect to relay"`, 5*time.Second)
	bad.kill()
	if strings.Contains(bad.out.String(), "wrong-pw") {
		t.Error("the agent's log shows the proxy password")
	}

	// transport quic cannot go through a proxy: a config error, whether the
	// proxy comes from the config or from the environment.
	for _, tc := range []struct {
		config string
		env    []string
		want   string
	}{
		{strings.Replace(config, "transport: auto", "transport: quic", 1), nil, "proxy: QUIC is unavailable through an HTTP proxy"},
		{strings.Replace(strings.Replace(config, "transport: auto", "transport: quic", 1), "proxy: ", "# proxy: ", 1), proxyEnv(fp.url(password), ""),
			"transport quic, but relay " + relayName + " is reached through the HTTP proxy http://agent:xxxxx@" + fp.addr + " (from https_proxy) and QUIC is unavailable through an HTTP proxy"},
	} {
		_, errOut, err := runCmdEnv(t, tc.env, bins.agent, "run", "--config", writeAgentConfig(t, tc.config))
		if err == nil || !strings.Contains(errOut, tc.want) || strings.Contains(errOut, password) {
			t.Errorf("transport quic with a proxy: %v\n%s\nwant an error saying %q without the password", err, errOut, tc.want)
		}
	}
}

// TestProxyNoProxyBypass: a relay listed in NO_PROXY (or the config's
// no_proxy) is dialled directly even though HTTPS_PROXY is set: the proxy
// sees nothing, and the agent's machine fails to resolve the name only the
// proxy knows.
func TestProxyNoProxyBypass(t *testing.T) {
	r := startRelay(t, relayOpts{transports: "tcp"})
	r.addTenant(t, "acme")
	_, port, _ := net.SplitHostPort(r.agentAddr)
	relayName := net.JoinHostPort("relay.invalid", port)
	fp := startForwardProxy(t, "agent", "pw", map[string]string{"relay.invalid": "127.0.0.1"})
	stateDir := filepath.Join(t.TempDir(), "state")
	enrollArgs := []string{"enroll", "--relay", relayName, "--token", r.token(t, "acme"), "--state-dir", stateDir, "--timeout", "15s"}

	_, errOut, err := runCmdEnv(t, proxyEnv(fp.url("pw"), "example.com,.invalid"), bins.agent, enrollArgs...)
	if err == nil || !strings.Contains(errOut, "lookup relay.invalid") || strings.Contains(errOut, "through HTTP proxy") {
		t.Fatalf("enrolment with the relay in NO_PROXY: %v\n%s\nwant a direct attempt that cannot resolve relay.invalid", err, errOut)
	}
	if s := fp.seen(); len(s) != 0 {
		t.Fatalf("the proxy saw %v although NO_PROXY exempts the relay", s)
	}

	// The same with a NO_PROXY that does not match: through the proxy.
	if _, errOut, err := runCmdEnv(t, proxyEnv(fp.url("pw"), "example.com"), bins.agent, enrollArgs...); err != nil {
		t.Fatalf("enrolment through the proxy: %v\n%s", err, errOut)
	}
	if n := fp.tunnelsTo(relayName); n != 1 {
		t.Fatalf("proxy opened %d tunnels to %s, want 1", n, relayName)
	}

	// The running agent: NO_PROXY from the environment, then no_proxy in
	// the config (which overrides a non-matching NO_PROXY).
	base := fmt.Sprintf("relays: [%q]\nstate_dir: %q\ntransport: tcp\nconnections: 1\nreconnect: {initial: 100ms, max: 1s}\nlog: {level: debug, format: json}\nservices: {}\n", relayName, stateDir)
	for _, tc := range []struct {
		name, config string
		env          []string
	}{
		{"NO_PROXY", base, proxyEnv(fp.url("pw"), ".invalid")},
		{"no_proxy in the config", base + "no_proxy: relay.invalid\n", proxyEnv(fp.url("pw"), "example.com")},
	} {
		a := startEnv(t, "tether-agent ("+tc.name+")", tc.env, bins.agent, "run", "--config", writeAgentConfig(t, tc.config))
		a.waitOutput("relay reached directly: exempt from the HTTP proxy", 10*time.Second)
		a.waitOutput("lookup relay.invalid", 10*time.Second)
		a.kill()
		if n := len(fp.seen()); n != 1 {
			t.Errorf("%s: the proxy saw %d requests, want only the earlier enrolment's", tc.name, n)
		}
	}
}

// TestProxyEnrolWithConfig: enroll --config reaches the relay as the agent
// will run with that config: through its proxy: (and no_proxy:), with no
// proxy in the environment; --proxy still overrides it.
func TestProxyEnrolWithConfig(t *testing.T) {
	r := startRelay(t, relayOpts{transports: "tcp"})
	r.addTenant(t, "acme")
	_, port, _ := net.SplitHostPort(r.agentAddr)
	relayName := net.JoinHostPort("relay.invalid", port) // only the proxy resolves it
	const password = "cfg-s3cret"
	fp := startForwardProxy(t, "agent", password, map[string]string{"relay.invalid": "127.0.0.1"})
	stateDir := filepath.Join(t.TempDir(), "state")
	config := writeAgentConfig(t, fmt.Sprintf("relays: [%q]\nstate_dir: %q\nproxy: %q\nservices: {}\n", relayName, stateDir, fp.url(password)))
	enroll := func(extra ...string) (string, error) {
		args := append([]string{"enroll", "--relay", relayName, "--config", config, "--timeout", "15s"}, extra...)
		_, errOut, err := runCmdEnv(t, append(proxyEnv("", ""), "TETHER_JOIN_TOKEN="+r.token(t, "acme")), bins.agent, args...)
		if strings.Contains(errOut, password) {
			t.Errorf("enrolment output shows the proxy password:\n%s", errOut)
		}
		return errOut, err
	}

	// --proxy direct overrides the config: the name does not resolve here.
	if errOut, err := enroll("--proxy", "direct"); err == nil || !strings.Contains(errOut, "lookup relay.invalid") {
		t.Fatalf("enrolment with --proxy direct: %v\n%s\nwant a direct attempt that cannot resolve relay.invalid", err, errOut)
	}
	errOut, err := enroll()
	if err != nil {
		t.Fatalf("enrolment with the config's proxy: %v\n%s", err, errOut)
	}
	if !strings.Contains(errOut, "through HTTP proxy http://agent:xxxxx@"+fp.addr+" (from proxy in the config)") {
		t.Errorf("enrolment output should name the config's proxy:\n%s", errOut)
	}
	if n := fp.tunnelsTo(relayName); n != 1 {
		t.Fatalf("proxy opened %d tunnels to %s, want 1 (saw %v)", n, relayName, fp.seen())
	}

	// The config's no_proxy applies too.
	config = writeAgentConfig(t, fmt.Sprintf("relays: [%q]\nstate_dir: %q\nproxy: %q\nno_proxy: .invalid\nservices: {}\n", relayName, stateDir, fp.url(password)))
	if errOut, err := enroll("--force"); err == nil || !strings.Contains(errOut, "lookup relay.invalid") {
		t.Fatalf("enrolment with the relay in the config's no_proxy: %v\n%s\nwant a direct attempt", err, errOut)
	}
}

// tlsFront puts TLS in front of the proxy at addr, as an https:// proxy
// speaks it, with a certificate for 127.0.0.1 from a CA of its own; it
// returns its address and the CA's PEM file.
func tlsFront(t *testing.T, addr string) (front, caFile string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "proxy.corp"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	caFile = filepath.Join(t.TempDir(), "proxy-ca.pem")
	writePEM(t, caFile, "CERTIFICATE", der)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex // guards conns
	conns := map[net.Conn]bool{}
	track := func(c net.Conn) {
		mu.Lock()
		conns[c] = true
		mu.Unlock()
	}
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			track(c)
			wg.Go(func() {
				defer c.Close()
				up, err := net.Dial("tcp", addr)
				if err != nil {
					return
				}
				track(up)
				defer up.Close()
				wg.Go(func() {
					io.Copy(up, c)
					up.(*net.TCPConn).CloseWrite()
				})
				io.Copy(c, up)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String(), caFile
}

// TestProxyHTTPSProxy: an https:// proxy in HTTPS_PROXY, its certificate
// from a CA the machine trusts (SSL_CERT_FILE): enrolment and the agent
// speak TLS to the proxy, CONNECT and the credentials inside it; without
// trusting the proxy's CA they refuse it, naming it without its password.
func TestProxyHTTPSProxy(t *testing.T) {
	r := startRelay(t, relayOpts{})
	r.addTenant(t, "acme")
	_, port, _ := net.SplitHostPort(r.agentAddr)
	relayName := net.JoinHostPort("relay.invalid", port) // only the proxy resolves it
	const password = "tls-s3cret"
	fp := startForwardProxy(t, "agent", password, map[string]string{"relay.invalid": "127.0.0.1"})
	front, caFile := tlsFront(t, fp.addr)
	proxyURL := "https://agent:" + password + "@" + front
	stateDir := filepath.Join(t.TempDir(), "state")
	enrollArgs := []string{"enroll", "--relay", relayName, "--state-dir", stateDir, "--timeout", "15s"}
	tokenEnv := func() string { return "TETHER_JOIN_TOKEN=" + r.token(t, "acme") }

	_, errOut, err := runCmdEnv(t, append(proxyEnv(proxyURL, ""), tokenEnv(), "SSL_CERT_FILE="+filepath.Join(t.TempDir(), "none.pem")), bins.agent, enrollArgs...)
	if err == nil || !strings.Contains(errOut, "TLS handshake with proxy https://agent:xxxxx@"+front) || strings.Contains(errOut, password) {
		t.Fatalf("enrolment through a proxy whose certificate is not trusted: %v\n%s\nwant a refusal naming the proxy without its password", err, errOut)
	}
	if n := len(fp.seen()); n != 0 {
		t.Fatalf("the proxy saw %d requests through an untrusted TLS connection", n)
	}

	env := append(proxyEnv(proxyURL, ""), "SSL_CERT_FILE="+caFile)
	_, errOut, err = runCmdEnv(t, append(env, tokenEnv()), bins.agent, enrollArgs...)
	if err != nil {
		t.Fatalf("enrolment through the https:// proxy: %v\n%s", err, errOut)
	}
	config := fmt.Sprintf("relays: [%q]\nstate_dir: %q\nrelay_connections: 1\nreconnect: {initial: 100ms, max: 1s}\nlog: {level: debug, format: json}\nservices: {}\n", relayName, stateDir)
	a := startEnv(t, "tether-agent (https proxy)", env, bins.agent, "run", "--config", writeAgentConfig(t, config))
	a.waitOutput(`"transport_why":"auto: QUIC is unavailable through an HTTP proxy; through HTTP proxy `+front+`"`, 20*time.Second)
	if n := fp.tunnelsTo(relayName); n != 2 {
		t.Errorf("proxy opened %d tunnels to %s, want the enrolment's and the agent's (saw %v)", n, relayName, fp.seen())
	}
	a.kill()
	if out := a.out.String() + errOut; strings.Contains(out, password) {
		t.Error("a proxy password appears in the output")
	}
}

// TestProxyHTTPSProxyCAFile: an https:// proxy whose certificate is from
// the tenant's private CA, which the machine does not trust (SSL_CERT_FILE
// names no CA): without proxy_ca_file, enroll --config refuses the proxy
// with an error that names it, says its certificate is not trusted and
// points at proxy_ca_file; with the key naming the CA, enroll --config
// and the agent reach the relay through it.
func TestProxyHTTPSProxyCAFile(t *testing.T) {
	r := startRelay(t, relayOpts{})
	r.addTenant(t, "acme")
	_, port, _ := net.SplitHostPort(r.agentAddr)
	relayName := net.JoinHostPort("relay.invalid", port) // only the proxy resolves it
	const password = "ca-s3cret"
	fp := startForwardProxy(t, "agent", password, map[string]string{"relay.invalid": "127.0.0.1"})
	front, caFile := tlsFront(t, fp.addr)
	proxyURL := "https://agent:" + password + "@" + front
	stateDir := filepath.Join(t.TempDir(), "state")
	env := append(proxyEnv("", ""), "SSL_CERT_FILE="+filepath.Join(t.TempDir(), "none.pem"))
	base := fmt.Sprintf("relays: [%q]\nstate_dir: %q\nproxy: %q\nrelay_connections: 1\nreconnect: {initial: 100ms, max: 1s}\nlog: {level: debug, format: json}\nservices: {}\n", relayName, stateDir, proxyURL)
	enroll := func(config string) (string, error) {
		_, errOut, err := runCmdEnv(t, append(env, "TETHER_JOIN_TOKEN="+r.token(t, "acme")), bins.agent,
			"enroll", "--relay", relayName, "--config", config, "--timeout", "15s")
		if strings.Contains(errOut, password) {
			t.Errorf("enrolment output shows the proxy password:\n%s", errOut)
		}
		return errOut, err
	}

	errOut, err := enroll(writeAgentConfig(t, base))
	want := "TLS handshake with proxy https://agent:xxxxx@" + front + ": the proxy's certificate is not trusted"
	if err == nil || !strings.Contains(errOut, want) || !strings.Contains(errOut, "proxy_ca_file") {
		t.Fatalf("enrolment through a proxy of a private CA, without proxy_ca_file: %v\n%s\nwant %q pointing at proxy_ca_file", err, errOut, want)
	}
	if n := len(fp.seen()); n != 0 {
		t.Fatalf("the proxy saw %d requests through an untrusted TLS connection", n)
	}

	config := writeAgentConfig(t, base+fmt.Sprintf("proxy_ca_file: %q\n", caFile))
	if errOut, err := enroll(config); err != nil {
		t.Fatalf("enrolment with proxy_ca_file: %v\n%s", err, errOut)
	}
	a := startEnv(t, "tether-agent (https proxy, private CA)", env, bins.agent, "run", "--config", config)
	a.waitOutput(`"transport_why":"auto: QUIC is unavailable through an HTTP proxy; through HTTP proxy `+front+`"`, 20*time.Second)
	if n := fp.tunnelsTo(relayName); n != 2 {
		t.Errorf("proxy opened %d tunnels to %s, want the enrolment's and the agent's (saw %v)", n, relayName, fp.seen())
	}
	a.kill()
	if strings.Contains(a.out.String(), password) {
		t.Error("a proxy password appears in the agent's output")
	}
}
