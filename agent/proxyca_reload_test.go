package agent

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestProxyCAFileReload: a site rotates the CA of its https:// proxy: the
// proxy's certificate is re-issued by a new CA and proxy_ca_file replaced
// (by a rename over it, then written in place). The running agent reloads
// the file without a restart: the session up is not cut, and the next one
// goes through the proxy with the new certificate. A replacement that is
// not a file of certificates keeps the CAs in use, with a warning naming
// the file and the error, in the log and the status, until a valid file
// comes back.
func TestProxyCAFileReload(t *testing.T) {
	ca := newTestCA(t)
	var proxyCert atomic.Pointer[tls.Certificate]
	reissue := func(by *privateCA) {
		c := by.issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "proxy.corp"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}})
		proxyCert.Store(&c)
	}
	corp1, corp2, corp3 := newPrivateCA(t), newPrivateCA(t), newPrivateCA(t)
	reissue(corp1)
	p := startConnectProxy(t, "ok", "agent", "tls-secret", &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return proxyCert.Load(), nil }})
	r := newTestRelay(t, ca, "r1", "127.0.0.1", false)
	relay := proxiedName(p, "relay.invalid", r.addr)

	pemOf := func(c *privateCA) []byte {
		data, err := os.ReadFile(c.file)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	dir := t.TempDir()
	caPath := filepath.Join(dir, "proxy-ca.pem")
	if err := os.WriteFile(caPath, pemOf(corp1), 0o644); err != nil {
		t.Fatal(err)
	}

	logger, seen := watchLogger(t)
	a := enrolledWith(t, Config{Relays: []string{relay}, RelayConnections: 1, Proxy: "https://agent:tls-secret@" + p.addr, ProxyCAFile: caPath,
		Logger: logger, Reconnect: Backoff{Initial: 100 * time.Millisecond, Max: time.Second}, Services: map[string]Service{}}, ca.root, ca.root)
	runUntilCleanup(t, a)
	seen.wait(t, "watching files for changes", 1)

	// newSession waits for a session through the proxy other than old.
	newSession := func(what string, old *relayConn) *relayConn {
		t.Helper()
		var c *relayConn
		waitFor(t, 10*time.Second, what, func() error {
			open := r.open()
			if len(open) != 1 || open[0] == old {
				return fmt.Errorf("r1 has %d sessions open (the old one among them: %v); agent: %s", len(open), len(open) == 1, lastErrors(a))
			}
			c = open[0]
			return nil
		})
		return c
	}
	// reconnect ends c from the relay's side, and waits for the agent's
	// next session through the proxy.
	reconnect := func(what string, c *relayConn) *relayConn {
		t.Helper()
		select {
		case <-c.done:
			t.Fatalf("%s: the session up was cut by the reload", what)
		default:
		}
		c.ts.Close()
		return newSession(what, c)
	}
	const reloaded = "proxy CAs reloaded from their file; new connections to the proxy verify it against them"
	const refused = "proxy CA file does not load; keeping the proxy CAs in use"

	c := newSession("a session through the proxy of the first CA", nil)

	// A new CA, its file renamed over the old one.
	reissue(corp2)
	tmp := filepath.Join(dir, ".proxy-ca.pem.tmp")
	if err := os.WriteFile(tmp, pemOf(corp2), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, caPath); err != nil {
		t.Fatal(err)
	}
	seen.wait(t, reloaded, 1)
	c = reconnect("a session through the proxy re-issued by the second CA (file renamed over)", c)

	// Another, written in place.
	reissue(corp3)
	if err := os.WriteFile(caPath, pemOf(corp3), 0o644); err != nil {
		t.Fatal(err)
	}
	seen.wait(t, reloaded, 2)
	c = reconnect("a session through the proxy re-issued by the third CA (file written in place)", c)

	// A replacement that is not a file of certificates: the CAs in use
	// stay, and the problem is said.
	if err := os.WriteFile(caPath, []byte("not a certificate\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	seen.wait(t, refused, 1)
	st := a.Status()
	if e := st.ProxyCAError; !strings.Contains(e, "proxy_ca_file "+caPath) || !strings.Contains(e, "no PEM certificate") {
		t.Fatalf("status proxy_ca_error %q: want the file and its error", e)
	}
	if !strings.Contains(statusJSON(t, a), `"proxy_ca_error"`) {
		t.Errorf("status JSON has no proxy_ca_error: %s", statusJSON(t, a))
	}
	c = reconnect("a session through the proxy with the CAs kept from the last good file", c)

	// A file that cannot be read (removed) keeps them too.
	if err := os.Remove(caPath); err != nil {
		t.Fatal(err)
	}
	seen.wait(t, refused, 2)
	if e := a.ProxyCAError(); !strings.Contains(e, caPath) || !strings.Contains(e, "no such file") {
		t.Fatalf("proxy CA error %q after the file was removed", e)
	}

	// The good file back: the problem is gone, and nothing changed.
	if err := os.WriteFile(caPath, pemOf(corp3), 0o644); err != nil {
		t.Fatal(err)
	}
	seen.wait(t, "proxy CA file loads again", 1)
	if e := a.ProxyCAError(); e != "" {
		t.Fatalf("proxy CA error %q after a good file came back", e)
	}
	if n := seen.count(reloaded); n != 2 {
		t.Errorf("%d× %q, want 2: the same CAs again are no change", n, reloaded)
	}
	reconnect("a session through the proxy after the good file came back", c)
}
