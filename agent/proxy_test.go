package agent

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// connectProxy is a small HTTP forward proxy that serves CONNECT only, for
// testing the agent's side of it. Its mode picks its behaviour:
//
//	ok       check credentials (when user is set), dial, answer 200, splice
//	early    like ok, but wait for the target's first bytes and send them
//	         in the same write as the 200 answer
//	forbid   answer 403
//	close    close the connection without answering
//	silent   read the request and never answer
//	garbage  answer with something that is not HTTP
//	close200 check credentials, answer 200, then close the tunnel
//	mitm     check credentials, answer 200, then answer the TLS handshake
//	         itself with mitmConf, as a TLS-inspecting proxy does
//	huge     answer 200 followed by headers that never end
//	hugeline answer with a status line that never ends
//	info     like ok, with two 1xx answers before the 200
type connectProxy struct {
	mode       string
	user, pass string            // credentials required when user != ""
	route      map[string]string // CONNECT target → address dialled for it (default: the target); guarded by mu
	mitmConf   *tls.Config       // for mode mitm

	ln   net.Listener
	addr string

	mu       sync.Mutex // guards the fields below
	connects []string   // CONNECT targets, in order
	auths    []string   // Proxy-Authorization header of each request
	conns    map[net.Conn]bool

	wg sync.WaitGroup
}

func startConnectProxy(t *testing.T, mode, user, pass string, tlsConf *tls.Config) *connectProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &connectProxy{mode: mode, user: user, pass: pass, addr: ln.Addr().String(), conns: map[net.Conn]bool{}}
	if tlsConf != nil {
		ln = tls.NewListener(ln, tlsConf)
	}
	p.ln = ln
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

// setRoute makes the proxy dial addr for CONNECT target.
func (p *connectProxy) setRoute(target, addr string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.route == nil {
		p.route = map[string]string{}
	}
	p.route[target] = addr
}

func (p *connectProxy) track(c net.Conn) {
	p.mu.Lock()
	p.conns[c] = true
	p.mu.Unlock()
}

func (p *connectProxy) seen() (connects, auths []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.connects...), append([]string(nil), p.auths...)
}

func (p *connectProxy) serve(c net.Conn) {
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	p.mu.Lock()
	p.connects = append(p.connects, req.RequestURI)
	p.auths = append(p.auths, req.Header.Get("Proxy-Authorization"))
	p.mu.Unlock()
	if req.Method != http.MethodConnect {
		io.WriteString(c, "HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
		return
	}
	switch p.mode {
	case "close":
		return
	case "huge", "hugeline":
		answer := "HTTP/1.1 200 Connection established\r\n"
		if p.mode == "hugeline" {
			answer = "HTTP/1.1 200 Connection established"
		}
		if _, err := io.WriteString(c, answer); err != nil {
			return
		}
		line := []byte("X-Padding: " + strings.Repeat("a", 1000) + "\r\n")
		if p.mode == "hugeline" {
			line = []byte(strings.Repeat("a", 1000))
		}
		for {
			if _, err := c.Write(line); err != nil {
				return
			}
		}
	case "silent":
		io.Copy(io.Discard, br)
		return
	case "garbage":
		io.WriteString(c, "SSH-2.0-OpenSSH_9.6\r\n")
		return
	case "forbid":
		io.WriteString(c, "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n\r\nforbidden")
		return
	}
	if p.user != "" {
		want := "Basic " + base64.StdEncoding.EncodeToString([]byte(p.user+":"+p.pass))
		if req.Header.Get("Proxy-Authorization") != want {
			io.WriteString(c, "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n\r\n")
			return
		}
	}
	switch p.mode {
	case "close200":
		io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
		return
	case "mitm":
		if _, err := io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
			return
		}
		tc := tls.Server(c, p.mitmConf)
		tc.SetDeadline(time.Now().Add(10 * time.Second))
		tc.Handshake()
		return
	}
	target := req.RequestURI
	p.mu.Lock()
	if a, ok := p.route[target]; ok {
		target = a
	}
	p.mu.Unlock()
	up, err := net.Dial("tcp", target)
	if err != nil {
		io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
		return
	}
	p.track(up)
	defer up.Close()
	answer := []byte("HTTP/1.1 200 Connection established\r\n\r\n")
	if p.mode == "info" {
		answer = append([]byte("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n"), answer...)
	}
	if p.mode == "early" {
		buf := make([]byte, 512)
		n, err := up.Read(buf)
		if err != nil {
			return
		}
		answer = append(answer, buf[:n]...)
	}
	if _, err := c.Write(answer); err != nil {
		return
	}
	p.wg.Go(func() {
		io.Copy(up, br)
		up.(*net.TCPConn).CloseWrite()
	})
	io.Copy(c, up)
}

// greeter is a TCP server that sends a greeting line, then echoes.
func greeter(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex // guards conns
	conns := map[net.Conn]bool{}
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				io.WriteString(c, "hello from the relay\n")
				io.Copy(c, c)
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
	return ln.Addr().String()
}

func testDialer(t *testing.T, proxyURL string) *proxyDialer {
	t.Helper()
	u, err := parseProxyURL(proxyURL)
	if err != nil {
		t.Fatal(err)
	}
	return &proxyDialer{proxy: u, forward: (&net.Dialer{}).DialContext}
}

// checkTunnel reads the greeting and one echoed line through c.
func checkTunnel(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	if line, err := br.ReadString('\n'); err != nil || line != "hello from the relay\n" {
		t.Fatalf("greeting through the tunnel: %q, %v", line, err)
	}
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		t.Fatal(err)
	}
	if line, err := br.ReadString('\n'); err != nil || line != "ping\n" {
		t.Fatalf("echo through the tunnel: %q, %v", line, err)
	}
}

func TestProxyDialerConnect(t *testing.T) {
	target := greeter(t)
	p := startConnectProxy(t, "ok", "agent", "p@ss:word", nil)
	d := testDialer(t, "http://agent:p%40ss%3Aword@"+p.addr)
	c, err := d.DialContext(context.Background(), "tcp", target)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	checkTunnel(t, c)
	connects, auths := p.seen()
	if len(connects) != 1 || connects[0] != target {
		t.Fatalf("proxy saw CONNECT %q, want [%s]", connects, target)
	}
	if want := "Basic " + base64.StdEncoding.EncodeToString([]byte("agent:p@ss:word")); auths[0] != want {
		t.Fatalf("Proxy-Authorization %q, want %q", auths[0], want)
	}
}

func TestProxyDialerNoCredentials(t *testing.T) {
	target := greeter(t)
	p := startConnectProxy(t, "ok", "", "", nil)
	c, err := testDialer(t, "http://"+p.addr).DialContext(context.Background(), "tcp", target)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	checkTunnel(t, c)
	if _, auths := p.seen(); auths[0] != "" {
		t.Fatalf("sent Proxy-Authorization %q without credentials in the URL", auths[0])
	}
}

// The relay's first bytes may arrive in the same read as the proxy's
// answer: they must reach the tunnel, not be lost in a buffer.
func TestProxyDialerBytesAfter200(t *testing.T) {
	target := greeter(t)
	p := startConnectProxy(t, "early", "", "", nil)
	c, err := testDialer(t, "http://"+p.addr).DialContext(context.Background(), "tcp", target)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, ok := c.(*prefixConn); !ok {
		t.Fatalf("the greeting did not arrive with the 200 answer (got %T): the test did not exercise early bytes", c)
	}
	checkTunnel(t, c)
}

func TestProxyDialerRefusals(t *testing.T) {
	target := greeter(t)
	for _, tc := range []struct {
		name, mode, user string
		timeout          time.Duration
		want             []string
		status           int // a *ProxyError with this status; 0: another error
	}{
		{name: "407 without credentials", mode: "ok", want: []string{"refused CONNECT to " + target + ": 407 Proxy Authentication Required", "the proxy requires credentials"}, status: 407},
		{name: "407 wrong password", mode: "ok", user: "agent:wrong-secret@", want: []string{"407 Proxy Authentication Required", "did not accept the user name and password", "agent:xxxxx@"}, status: 407},
		{name: "403", mode: "forbid", want: []string{"refused CONNECT to " + target + ": 403 Forbidden", "port 443"}, status: 403},
		{name: "closes early", mode: "close", want: []string{"closed the connection instead of answering CONNECT to " + target}},
		{name: "not HTTP", mode: "garbage", want: []string{"malformed answer to CONNECT"}},
		{name: "silent", mode: "silent", timeout: 300 * time.Millisecond, want: []string{"did not answer CONNECT to " + target + " within 300ms"}},
		{name: "endless headers", mode: "huge", want: []string{"answered CONNECT to " + target + " with more than 64 KiB of headers"}},
		{name: "endless status line", mode: "hugeline", want: []string{"answered CONNECT to " + target + " with more than 64 KiB of headers"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startConnectProxy(t, tc.mode, "agent", "right-secret", nil)
			d := testDialer(t, "http://"+tc.user+p.addr)
			d.timeout = tc.timeout
			start := time.Now()
			c, err := d.DialContext(context.Background(), "tcp", target)
			if err == nil {
				c.Close()
				t.Fatal("dial succeeded")
			}
			if took := time.Since(start); took > 5*time.Second {
				t.Errorf("failing took %v", took)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("error %q shows the password", err)
			}
			var pe *ProxyError
			if got := errors.As(err, &pe); got != (tc.status != 0) || (got && pe.StatusCode != tc.status) {
				t.Errorf("error %#v: want a *ProxyError with status %d", err, tc.status)
			}
			if tc.status != 0 && !isPermanent(err) {
				t.Errorf("a %d refusal is not treated as permanent", tc.status)
			}
		})
	}
}

// 1xx answers before the 200 are skipped.
func TestProxyDialerInformational(t *testing.T) {
	target := greeter(t)
	p := startConnectProxy(t, "info", "", "", nil)
	c, err := testDialer(t, "http://"+p.addr).DialContext(context.Background(), "tcp", target)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	checkTunnel(t, c)
}

// An IPv6 relay is asked for in brackets (RFC 9110 authority form); the
// proxy, which routes it to a test server, would refuse anything else.
func TestProxyDialerIPv6Relay(t *testing.T) {
	target := greeter(t)
	p := startConnectProxy(t, "ok", "agent", "pw", nil)
	relay := "[2001:db8::7]:7443"
	p.setRoute(relay, target)
	c, err := testDialer(t, "http://agent:pw@"+p.addr).DialContext(context.Background(), "tcp", relay)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	checkTunnel(t, c)
	if connects, _ := p.seen(); len(connects) != 1 || connects[0] != relay {
		t.Fatalf("proxy saw CONNECT %q, want %s", connects, relay)
	}
}

func TestProxyDialerCancel(t *testing.T) {
	p := startConnectProxy(t, "silent", "", "", nil)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	_, err := testDialer(t, "http://"+p.addr).DialContext(ctx, "tcp", "relay.example:7443")
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("cancellation took %v", took)
	}
}

func TestProxyDialerUnreachableProxy(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, err = testDialer(t, "http://agent:secret@"+addr).DialContext(context.Background(), "tcp", "relay.example:7443")
	if err == nil || !strings.Contains(err.Error(), "connect to proxy http://agent:xxxxx@"+addr) || strings.Contains(err.Error(), "secret") {
		t.Fatalf("got %v", err)
	}
}

// An https:// proxy: TLS to the proxy, CONNECT inside, the tunnel inside that.
func TestProxyDialerHTTPSProxy(t *testing.T) {
	target := greeter(t)
	cert, roots := selfSigned(t)
	p := startConnectProxy(t, "early", "agent", "secret", &tls.Config{Certificates: []tls.Certificate{cert}})
	d := testDialer(t, "https://agent:secret@"+p.addr)
	d.tlsConf = &tls.Config{RootCAs: roots}
	c, err := d.DialContext(context.Background(), "tcp", target)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	checkTunnel(t, c)

	// Without trusting the proxy's certificate, the agent refuses it.
	d.tlsConf = nil
	if c, err := d.DialContext(context.Background(), "tcp", target); err == nil {
		c.Close()
		t.Fatal("an untrusted proxy certificate was accepted")
	} else if !strings.Contains(err.Error(), "TLS handshake with proxy https://agent:xxxxx@") {
		t.Fatalf("got %v", err)
	}
}

func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, roots
}

func TestProxyEgress(t *testing.T) {
	for _, tc := range []struct {
		name            string
		setting, noProx string
		env             map[string]string
		relay           string
		want            string // the proxy's redacted URL, "" for direct
		source          string
	}{
		{name: "nothing set", relay: "relay.example.com:7443"},
		{name: "HTTPS_PROXY", env: map[string]string{"HTTPS_PROXY": "http://u:pw@proxy.corp:3128"}, relay: "relay.example.com:7443", want: "http://u:xxxxx@proxy.corp:3128", source: "HTTPS_PROXY"},
		{name: "https_proxy wins", env: map[string]string{"HTTPS_PROXY": "http://upper:3128", "https_proxy": "http://lower:3128"}, relay: "r.example:7443", want: "http://lower:3128", source: "https_proxy"},
		{name: "bare host:port", env: map[string]string{"HTTPS_PROXY": "proxy.corp:8080"}, relay: "r.example:7443", want: "http://proxy.corp:8080", source: "HTTPS_PROXY"},
		{name: "HTTP_PROXY is not used", env: map[string]string{"HTTP_PROXY": "http://proxy.corp:3128"}, relay: "r.example:7443"},
		{name: "NO_PROXY domain", env: map[string]string{"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "example.com"}, relay: "relay.example.com:7443"},
		{name: "NO_PROXY other domain", env: map[string]string{"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "example.org,.corp"}, relay: "relay.example.com:7443", want: "http://proxy:3128", source: "HTTPS_PROXY"},
		{name: "no_proxy lower case", env: map[string]string{"HTTPS_PROXY": "http://proxy:3128", "no_proxy": ".example.com"}, relay: "relay.example.com:7443"},
		{name: "NO_PROXY CIDR", env: map[string]string{"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "10.0.0.0/8"}, relay: "10.1.2.3:7443"},
		{name: "NO_PROXY port", env: map[string]string{"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "relay.example.com:443"}, relay: "relay.example.com:7443", want: "http://proxy:3128", source: "HTTPS_PROXY"},
		{name: "NO_PROXY star", env: map[string]string{"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "*"}, relay: "relay.example.com:7443"},
		{name: "loopback is direct", env: map[string]string{"HTTPS_PROXY": "http://proxy:3128"}, relay: "127.0.0.1:7443"},
		{name: "config overrides env", setting: "https://cfg:pw@cfgproxy:443", env: map[string]string{"HTTPS_PROXY": "http://envproxy:3128"}, relay: "r.example:7443", want: "https://cfg:xxxxx@cfgproxy:443", source: "proxy in the config"},
		{name: "direct ignores env", setting: ProxyDirect, env: map[string]string{"HTTPS_PROXY": "http://envproxy:3128"}, relay: "r.example:7443"},
		{name: "config no_proxy", setting: "http://proxy:3128", noProx: "r.example", relay: "r.example:7443"},
		{name: "IPv6 relay", env: map[string]string{"HTTPS_PROXY": "http://proxy:3128"}, relay: "[2001:db8::7]:7443", want: "http://proxy:3128", source: "HTTPS_PROXY"},
		{name: "IPv6 loopback is direct", env: map[string]string{"HTTPS_PROXY": "http://proxy:3128"}, relay: "[::1]:7443"},
		{name: "NO_PROXY IPv6 address", env: map[string]string{"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "2001:db8::7"}, relay: "[2001:db8::7]:7443"},
		{name: "NO_PROXY IPv6 CIDR", env: map[string]string{"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "2001:db8::/32"}, relay: "[2001:db8::7]:7443"},
		{name: "NO_PROXY other IPv6 CIDR", env: map[string]string{"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "2001:db9::/32"}, relay: "[2001:db8::7]:7443", want: "http://proxy:3128", source: "HTTPS_PROXY"},
		{name: "NO_PROXY matches any case", env: map[string]string{"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "EXAMPLE.com"}, relay: "Relay.Example.COM:7443"},
		{name: "https_proxy lower case alone", env: map[string]string{"https_proxy": "https://u:pw@proxy:8443"}, relay: "r.example:7443", want: "https://u:xxxxx@proxy:8443", source: "https_proxy"},
		{name: "http_proxy lower case is not used", env: map[string]string{"http_proxy": "http://proxy:3128"}, relay: "r.example:7443"},
		{name: "config no_proxy overrides env", setting: "http://proxy:3128", noProx: "other.example", env: map[string]string{"NO_PROXY": "r.example"}, relay: "r.example:7443", want: "http://proxy:3128", source: "proxy in the config"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, err := newEgress(tc.setting, tc.noProx, func(k string) string { return tc.env[k] })
			if err != nil {
				t.Fatal(err)
			}
			got := ""
			if p := e.forRelay(tc.relay); p != nil {
				got = p.Redacted()
			}
			if got != tc.want {
				t.Fatalf("proxy for %s: %q, want %q", tc.relay, got, tc.want)
			}
			if got != "" && e.source != tc.source {
				t.Fatalf("source %q, want %q", e.source, tc.source)
			}
		})
	}
}

func TestProxyEgressInvalid(t *testing.T) {
	for _, tc := range []struct{ setting, env, want string }{
		{env: "socks5://u:secret@proxy:1080", want: `HTTPS_PROXY: proxy scheme "socks5"`},
		{env: "http://u:secret@proxy:99999", want: "HTTPS_PROXY: proxy URL has an invalid port"},
		{env: "secret://u@proxy:1080", want: "HTTPS_PROXY: proxy scheme is not http or https"},
		{setting: "http://u:secret@pro xy:3128", want: "proxy in the config: not a proxy URL"},
		{setting: "http://u:secret@proxy:3128/path", want: "must not have a path"},
		{setting: "http://u:secret@:3128", want: "has no host"},
	} {
		e, err := newEgress(tc.setting, "", func(k string) string {
			if k == "HTTPS_PROXY" {
				return tc.env
			}
			return ""
		})
		if tc.env != "" {
			// A proxy of the environment is refused for the relays it
			// would carry only.
			if err != nil {
				t.Errorf("%q: newEgress: %v, want the error for a relay behind it only", tc.env, err)
				continue
			}
			if err := e.check("127.0.0.1:7443"); err != nil {
				t.Errorf("%q: a loopback relay is refused: %v", tc.env, err)
			}
			err = e.check("r.example:7443")
			if _, derr := e.dialer("r.example:7443", nil)(context.Background(), "tcp", "r.example:7443"); derr != err {
				t.Errorf("%q: dialer: %v, want %v", tc.env, derr, err)
			}
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "secret") {
			t.Errorf("%q/%q: got %v, want an error saying %q without the password", tc.setting, tc.env, err, tc.want)
		}
	}
}

func TestProxyConfig(t *testing.T) {
	base := "state_dir: /x\nservices: {}\n"
	for _, tc := range []struct{ yaml, want string }{
		{yaml: "proxy: http://agent:secret@proxy.corp:3128\n"},
		{yaml: "proxy: https://proxy.corp\nno_proxy: internal.example,10.0.0.0/8\ntransport: tcp\n"},
		{yaml: "proxy: direct\ntransport: quic\n"},
		{yaml: "proxy: http://agent:secret@proxy.corp:3128\ntransport: quic\n", want: "QUIC is unavailable through an HTTP proxy"},
		{yaml: "proxy: socks5://agent:secret@proxy.corp:1080\n", want: `proxy: proxy scheme "socks5"`},
		{yaml: "proxy: \"http://agent:secret@proxy corp:3128\"\n", want: "proxy: not a proxy URL"},
	} {
		_, err := ParseConfig([]byte(base + tc.yaml))
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%q: %v", tc.yaml, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%q: got %v, want an error saying %q", tc.yaml, err, tc.want)
		case err != nil && strings.Contains(err.Error(), "secret"):
			t.Errorf("%q: error %q shows the password", tc.yaml, err)
		}
	}
}

// TestProxyPasswordNotInErrors: a proxy URL whose password holds an
// unencoded '/', '?' or '#' (or a bad %-escape, or a space) does not
// parse, and no part of the password reaches the error: not from the
// config file, not from HTTPS_PROXY, not in the config error the agent
// keeps and reports to the relay after a reload, not in its log.
func TestProxyPasswordNotInErrors(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	for _, pw := range []string{"Tr0ub4dor/3", "Tr0ub4dor#3", "Tr0ub4dor?3", "Tr0ub4dor/", "Tr0ub%zz4dor", "Tr0ub 4dor", "Tr0ub4dor/3?x#y"} {
		raw := "http://svc:" + pw + "@proxy.corp:3128"
		shows := func(s string) bool { return strings.Contains(s, "Tr0ub") || strings.Contains(s, "4dor") }

		_, err := ParseConfig([]byte("state_dir: /x\nservices: {}\nproxy: \"" + raw + "\"\n"))
		if err == nil || !strings.Contains(err.Error(), "percent-encode") {
			t.Errorf("%q in the config: got %v, want an error saying to percent-encode", pw, err)
		} else if shows(err.Error()) {
			t.Errorf("%q in the config: error %q shows part of the password", pw, err)
		}

		e, err := newEgress("", "", func(k string) string {
			if k == "HTTPS_PROXY" {
				return raw
			}
			return ""
		})
		if err == nil {
			err = e.check("r.example:7443")
		}
		if err == nil || !strings.HasPrefix(err.Error(), "HTTPS_PROXY: ") {
			t.Errorf("%q in HTTPS_PROXY: got %v, want an error", pw, err)
		} else if shows(err.Error()) {
			t.Errorf("%q in HTTPS_PROXY: error %q shows part of the password", pw, err)
		}

		var logged strings.Builder
		logger := slog.New(slog.NewTextHandler(&logged, nil))
		a := enrolledWith(t, Config{Logger: logger, Services: map[string]Service{"db": {Address: "127.0.0.1:5432"}}}, root, root)
		a.reloadConfig("agent.yaml", []byte("state_dir: /unused\nproxy: \""+raw+"\"\nservices:\n  db: 127.0.0.1:5432\n"))
		if e := a.Report().ConfigError; e == "" {
			t.Errorf("%q on reload: no config error reported", pw)
		} else if shows(e) {
			t.Errorf("%q on reload: config error reported to the relay %q shows part of the password", pw, e)
		}
		if shows(logged.String()) {
			t.Errorf("%q on reload: the log shows part of the password: %s", pw, logged.String())
		}
	}
}

func TestProxyURLDefaultPort(t *testing.T) {
	for in, want := range map[string]string{"http://p": "p:80", "https://p": "p:443", "http://p:3128": "p:3128", "http://[::1]:3128": "[::1]:3128"} {
		u, err := url.Parse(in)
		if err != nil {
			t.Fatal(err)
		}
		if got := proxyAddr(u); got != want {
			t.Errorf("%s: %s, want %s", in, got, want)
		}
	}
}
