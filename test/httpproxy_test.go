package test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// seenRequest is what the HTTP service behind the agent saw of a request.
type seenRequest struct {
	Method, URI, Host string
	Header            http.Header
	BodyLen           int
	BodySHA           string
	Remote            string // the connection it came on
}

// httpService runs an HTTP/1.1 server on loopback that answers every
// request with what it saw, as JSON, and counts the connections it
// accepted. It stops when the test ends.
func httpService(t *testing.T) (addr string, conns func() int) {
	t.Helper()
	var mu sync.Mutex // guards n
	n := 0
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			body, _ := io.ReadAll(req.Body)
			sum := sha256.Sum256(body)
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("X-Service", "behind-the-agent")
			json.NewEncoder(w).Encode(seenRequest{Method: req.Method, URI: req.RequestURI, Host: req.Host, Header: req.Header,
				BodyLen: len(body), BodySHA: hex.EncodeToString(sum[:]), Remote: req.RemoteAddr})
		}),
		ReadHeaderTimeout: 10 * time.Second,
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				mu.Lock()
				n++
				mu.Unlock()
			}
		},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); <-done })
	return ln.Addr().String(), func() int { mu.Lock(); defer mu.Unlock(); return n }
}

// proxyClient is an http.Client whose proxy is the relay's CONNECT door
// with the backend's name and key, as HTTP_PROXY=http://NAME:KEY@relay
// would make it.
func proxyClient(t *testing.T, connectAddr, backend, key string) *http.Client {
	t.Helper()
	u := &url.URL{Scheme: "http", User: url.UserPassword(backend, key), Host: connectAddr}
	tr := &http.Transport{Proxy: http.ProxyURL(u), MaxIdleConnsPerHost: 4}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// TestHTTPProxyPlainRequests: the CONNECT door serves plain HTTP proxy
// requests. A Go http.Client with Proxy set (as HTTP_PROXY sets it) GETs
// and POSTs http:// URLs of a real HTTP server behind a real agent; the
// service sees the request as sent, without Proxy-Authorization or
// hop-by-hop headers; answers carry Tether-Request-Id; an upstream
// connection is kept for the next request of the same backend and never
// used for another backend. Wrong credentials get 407 and a service the
// backend has no grant for 403, typed with Tether-Error and a request id
// that the relay's log and audit trail carry.
func TestHTTPProxyPlainRequests(t *testing.T) {
	svc, svcConns := httpService(t)
	r := startRelay(t, relayOpts{})
	r.addTenant(t, "acme")
	key := r.admin(t, "backend", "add", "billing", "--allow", "acme/api")
	otherKey := r.admin(t, "backend", "add", "reports", "--allow", "acme/api")
	startAgent(t, r, "acme", agentOpts{services: map[string]string{"api": svc, "secret": svc}})
	d := r.r.Backend(t, "probe", "acme")
	waitDial(t, d, "api.acme.tether:80", 20*time.Second).Close()
	// The probe's connection to the service is counted by the service's
	// accept loop, which may run after the probe's stream opened: it is
	// counted before the subtests count theirs.
	for deadline := time.Now().Add(10 * time.Second); svcConns() < 1; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the service never counted the probe's connection")
		}
	}
	c := proxyClient(t, r.connectAddr, "billing", key)

	get := func(t *testing.T, c *http.Client, u string) (*http.Response, seenRequest) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, u, nil)
		req.Header.Set("X-Trace", "t1")
		req.Header.Set("Connection", "keep-alive, X-Drop")
		req.Header.Set("X-Drop", "hop-by-hop")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("GET %s through the relay: %v", u, err)
		}
		defer resp.Body.Close()
		var seen seenRequest
		if resp.StatusCode == http.StatusOK {
			if err := json.NewDecoder(resp.Body).Decode(&seen); err != nil {
				t.Fatalf("GET %s: body: %v", u, err)
			}
		}
		return resp, seen
	}

	var firstID string
	t.Run("GET", func(t *testing.T) {
		before := svcConns()
		resp, seen := get(t, c, "http://api.acme.tether/v1/items?page=2")
		if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Service") != "behind-the-agent" {
			t.Fatalf("GET: %s %v, want 200 from the service", resp.Status, resp.Header)
		}
		if seen.Method != "GET" || seen.URI != "/v1/items?page=2" || seen.Host != "api.acme.tether" || seen.Header.Get("X-Trace") != "t1" {
			t.Fatalf("the service saw %+v, want GET /v1/items?page=2 for api.acme.tether with X-Trace", seen)
		}
		for _, h := range []string{"Proxy-Authorization", "Proxy-Connection", "X-Drop"} {
			if v := seen.Header.Get(h); v != "" {
				t.Errorf("the service saw %s: %q, want it left at the relay", h, v)
			}
		}
		firstID = resp.Header.Get("Tether-Request-Id")
		if len(firstID) != 16 {
			t.Fatalf("answer's Tether-Request-Id %q, want the stream's id", firstID)
		}
		// Kept alive: the next request of the same backend uses the
		// same upstream connection, the same stream.
		resp2, seen2 := get(t, c, "http://api.acme.tether/v1/other")
		if resp2.StatusCode != http.StatusOK || seen2.Remote != seen.Remote || resp2.Header.Get("Tether-Request-Id") != firstID {
			t.Errorf("second GET: %s on %s (stream %s), want the first's connection %s (stream %s)",
				resp2.Status, seen2.Remote, resp2.Header.Get("Tether-Request-Id"), seen.Remote, firstID)
		}
		if got := svcConns() - before; got != 1 {
			t.Errorf("the service accepted %d connections for two requests of one backend, want 1", got)
		}
		// Another backend never shares it.
		resp3, seen3 := get(t, proxyClient(t, r.connectAddr, "reports", otherKey), "http://api.acme.tether/v1/items")
		if resp3.StatusCode != http.StatusOK || seen3.Remote == seen.Remote || resp3.Header.Get("Tether-Request-Id") == firstID {
			t.Errorf("another backend's GET: %s on %s, want its own connection (billing's is %s)", resp3.Status, seen3.Remote, seen.Remote)
		}
	})

	t.Run("POST with a body", func(t *testing.T) {
		body := bytes.Repeat([]byte("tether "), 300_000) // 2.1 MB
		sum := sha256.Sum256(body)
		resp, err := c.Post("http://api.acme.tether/upload", "application/octet-stream", bytes.NewReader(body))
		if err != nil {
			t.Fatalf("POST through the relay: %v", err)
		}
		defer resp.Body.Close()
		var seen seenRequest
		if err := json.NewDecoder(resp.Body).Decode(&seen); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("POST: %s, %v", resp.Status, err)
		}
		if seen.Method != "POST" || seen.URI != "/upload" || seen.BodyLen != len(body) || seen.BodySHA != hex.EncodeToString(sum[:]) {
			t.Fatalf("the service saw %s %s with %d bytes (sha256 %s), want POST /upload with the %d bytes sent", seen.Method, seen.URI, seen.BodyLen, seen.BodySHA, len(body))
		}
	})

	refused := func(t *testing.T, c *http.Client, u string, status int, code string) string {
		t.Helper()
		resp, err := c.Get(u)
		if err != nil {
			t.Fatalf("GET %s: %v", u, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		id := resp.Header.Get("Tether-Request-Id")
		if resp.StatusCode != status || resp.Header.Get("Tether-Error") != code || len(id) != 16 {
			t.Fatalf("GET %s: %s, Tether-Error %q, Tether-Request-Id %q (%s); want %d, %s and an id", u, resp.Status,
				resp.Header.Get("Tether-Error"), id, strings.TrimSpace(string(body)), status, code)
		}
		line := relayLogLine(t, r.proc, "refused", id)
		if line["code"] != code || line["door"] != "http-proxy" {
			t.Errorf("relay log line %v: want %s at door http-proxy", line, code)
		}
		recs := relayAuditByRequest(t, r, id)
		if len(recs) != 1 || recs[0].Outcome != code || recs[0].Detail["door"] != "http-proxy" {
			t.Errorf("audit of request %s: %+v, want one %s record at door http-proxy", id, recs, code)
		}
		return id
	}

	t.Run("wrong credentials", func(t *testing.T) {
		refused(t, proxyClient(t, r.connectAddr, "billing", "tbk1_wrong"), "http://api.acme.tether/", http.StatusProxyAuthRequired, "unauthenticated")
	})

	t.Run("service without a grant", func(t *testing.T) {
		refused(t, c, "http://secret.acme.tether/", http.StatusForbidden, "not_allowed")
	})

	t.Run("unknown tenant", func(t *testing.T) {
		refused(t, c, "http://example.com/", http.StatusBadRequest, "bad_request")
	})

	t.Run("not an http URL", func(t *testing.T) {
		conn, err := net.Dial("tcp", r.connectAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(conn, "GET /relative HTTP/1.1\r\nHost: api.acme.tether\r\n\r\n")
		resp, err := http.ReadResponse(bufioReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Tether-Error") != "bad_request" || resp.Header.Get("Tether-Request-Id") == "" {
			t.Errorf("origin-form GET: %s %v, want 405 bad_request with a request id", resp.Status, resp.Header)
		}
	})

	// Every request is authorized, kept connection or not: a grant
	// removed refuses the next request on billing's kept connection.
	t.Run("grant removed", func(t *testing.T) {
		if _, seen := get(t, c, "http://api.acme.tether/still"); seen.URI != "/still" {
			t.Fatalf("GET before the ungrant: %+v", seen)
		}
		r.admin(t, "backend", "ungrant", "billing", "acme/api")
		deadline := time.Now().Add(10 * time.Second)
		for {
			resp, _ := get(t, c, "http://api.acme.tether/still")
			if resp.StatusCode == http.StatusForbidden && resp.Header.Get("Tether-Error") == "not_allowed" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("GET on a kept connection 10s after the grant was removed: %s, want 403 not_allowed", resp.Status)
			}
			time.Sleep(100 * time.Millisecond) // bounded poll: the relay applies the change within its change poll
		}
	})

	// An upstream connection kept idle is a stream: the relay closes it
	// when idle long enough or when it stops, and audits it then, with
	// the id its answers carried.
	t.Run("stream audited", func(t *testing.T) {
		if firstID == "" {
			t.Skip("GET failed")
		}
		if err := r.stop(30 * time.Second); err != nil {
			t.Fatalf("relay stop: %v", err)
		}
		recs := relayAuditByRequest(t, r, firstID)
		if len(recs) != 1 || recs[0].Outcome != "ok" || recs[0].Detail["door"] != "http-proxy" || recs[0].Backend != "billing" || recs[0].Detail["service"] != "api" {
			t.Fatalf("audit of stream %s: %+v, want one ok record of billing's stream to api at door http-proxy", firstID, recs)
		}
		if n, _ := recs[0].Detail["bytes_from_service"].(float64); n <= 0 {
			t.Errorf("stream record %+v: no bytes from the service", recs[0])
		}
	})
}
