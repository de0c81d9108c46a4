package test

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"

	"testing"
	"time"

	"github.com/tetherhq/tether/test/internal/e2e"
)

// TestRelayForwardFirstBytes: a relay-side forward sends what the client
// has sent by the time its connection is taken with the stream's opening
// (up to 16 KiB), and the rest through the tunnel as before. A request
// larger than that reaches a real HTTP server whole and in order, and is
// audited with every byte counted; a service that speaks first is not
// held up waiting for the client; a stream the agent refuses, its first
// bytes sent, is refused as before.
func TestRelayForwardFirstBytes(t *testing.T) {
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		sum := sha256.Sum256(body)
		fmt.Fprintf(w, "%d %s", len(body), hex.EncodeToString(sum[:]))
	}))
	defer web.Close()
	bannerService := tcpService(t, banner)

	cfg := filepath.Join(t.TempDir(), "relay.yaml")
	webAddr, bannerAddr, goneAddr := e2e.FreeAddr(t, "127.0.0.1"), e2e.FreeAddr(t, "127.0.0.1"), e2e.FreeAddr(t, "127.0.0.1")
	writeConfig(t, cfg, forwardsYAML())
	r := startRelay(t, relayOpts{extra: []string{"--config", cfg}})
	r.waitOutput(`"msg":"watching the config file"`, 20*time.Second)
	r.addTenant(t, "acme")
	r.admin(t, "backend", "add", "billing", "--allow", "acme")
	startAgent(t, r, "acme", agentOpts{services: map[string]string{"web": web.Listener.Addr().String(), "banner": bannerService}})
	d := r.r.Backend(t, "probe", "acme")
	waitDial(t, d, "banner.acme.tether:1", 20*time.Second).Close()
	writeConfig(t, cfg, forwardsYAML([3]string{webAddr, "web.acme", "billing"}, [3]string{bannerAddr, "banner.acme", "billing"},
		[3]string{goneAddr, "gone.acme", "billing"}))
	for _, target := range []string{"web.acme", "banner.acme", "gone.acme"} {
		forwardListening(t, r.proc, target)
	}

	t.Run("request larger than the first bytes", func(t *testing.T) {
		body := bytes.Repeat([]byte("0123456789abcdef"), 40<<10/16) // 40 KiB
		req := []byte(fmt.Sprintf("POST /upload HTTP/1.1\r\nHost: web\r\nContent-Length: %d\r\nConnection: close\r\n\r\n", len(body)))
		req = append(req, body...)
		c, err := net.DialTimeout("tcp", webAddr, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := c.Write(req); err != nil { // one write: the relay finds it all there
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		sum := sha256.Sum256(body)
		if want := fmt.Sprintf("%d %s", len(body), hex.EncodeToString(sum[:])); resp.StatusCode != 200 || string(got) != want {
			t.Fatalf("the service answered %d %q, want 200 %q", resp.StatusCode, got, want)
		}
		c.Close()
		recs := relayAuditKind(t, r, "stream", func(rec requestRec) bool {
			return rec.Detail["door"] == "forward" && rec.Detail["service"] == "web" && rec.Outcome == "ok"
		})
		if n, _ := recs[0].Detail["bytes_to_service"].(float64); int(n) != len(req) {
			t.Errorf("audited bytes_to_service %v, want %d (every byte the client sent, the first ones included)", recs[0].Detail["bytes_to_service"], len(req))
		}
	})

	t.Run("service that speaks first", func(t *testing.T) {
		c, err := net.DialTimeout("tcp", bannerAddr, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(c)
		line, err := br.ReadString('\n')
		if err != nil || line != "220 ready\r\n" {
			t.Fatalf("banner through the forward, nothing sent: %q, %v", line, err)
		}
		if _, err := c.Write([]byte("ping\n")); err != nil {
			t.Fatal(err)
		}
		if line, err := br.ReadString('\n'); err != nil || line != "ping\n" {
			t.Fatalf("echo through the forward: %q, %v", line, err)
		}
	})

	t.Run("refused", func(t *testing.T) {
		c, err := net.DialTimeout("tcp", goneAddr, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write([]byte("GET / HTTP/1.1\r\nHost: web\r\n\r\n"))
		if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil {
			t.Fatalf("a forward to a service the agent does not expose answered %d bytes, %v", n, err)
		}
		refusedForward(t, r.proc, "unknown_service", 0)
	})
}

// banner is a TCP service (for tcpService) that greets its connection
// with "220 ready\r\n" before reading anything, then echoes.
func banner(c net.Conn) {
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(c, "220 ready\r\n"); err != nil {
		return
	}
	io.Copy(c, c)
}
