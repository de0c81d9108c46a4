package client_test

import (
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// The relay's CONNECT door as a plain HTTP proxy, in this process: a GET
// and a POST reach the HTTP service behind the agent, a refusal is typed
// with its request id, a service closing its connection ends the stream,
// and the relay stops with the client's keep-alive connection open,
// leaving no goroutine behind (goleak in TestMain).
func TestPlainHTTPProxy(t *testing.T) {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections) // after the relay stopped (cleanups run last first)
	w := newWorld(t, worldOpts{})
	proxy := &url.URL{Scheme: "http", User: url.UserPassword(w.plain.Backend, w.plain.APIKey), Host: w.plain.Relay}
	tr.Proxy = http.ProxyURL(proxy)
	c := &http.Client{Transport: tr, Timeout: 20 * time.Second}

	for _, tc := range []struct{ method, body, want string }{
		{http.MethodGet, "", "web GET /a"},
		{http.MethodPost, strings.Repeat("x", 100_000), "web POST /a"},
	} {
		req, _ := http.NewRequest(tc.method, "http://"+w.web+"/a", strings.NewReader(tc.body))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s through the relay: %v", tc.method, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(b) != tc.want || len(resp.Header.Get("Tether-Request-Id")) != 16 || resp.Header.Get("Tether-Error") != "" {
			t.Fatalf("%s: %s %q (request %q), want 200 %q with a request id and no Tether-Error (%q)", tc.method, resp.Status, b, resp.Header.Get("Tether-Request-Id"), tc.want, resp.Header.Get("Tether-Error"))
		}
	}
	resp, err := c.Get("http://" + strings.TrimSuffix(w.denied, ":7") + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || resp.Header.Get("Tether-Error") != "not_allowed" || len(resp.Header.Get("Tether-Request-Id")) != 16 {
		t.Fatalf("a service without a grant: %s %v, want 403 not_allowed with a request id", resp.Status, resp.Header)
	}
	// The service closes the kept connection after this one: the stream
	// ends, and the agent, stopped first, has none to wait for.
	resp, err = c.Get("http://" + w.web + "/bye")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /bye: %s", resp.Status)
	}
}
