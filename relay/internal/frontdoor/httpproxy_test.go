package frontdoor

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// lockingConn is a connection whose Close takes the proxy's lock, as an
// upstream connection (proxyConn) does, and counts closes under it.
type lockingConn struct {
	net.Conn
	p      *httpProxy
	closes *int // guarded by p.mu
}

func (c *lockingConn) Close() error {
	c.p.mu.Lock()
	*c.closes++
	c.p.mu.Unlock()
	return c.Conn.Close()
}

// TestProxyPoolDropWithIdleConnections: when the proxy has a pool per
// (backend, service) pair up to its cap, a new pair drops an old pool,
// closing its idle connections; closing one takes the proxy's lock, so
// the drop must not happen under it. It did, and the first new pair past
// the cap whose dropped pool held an idle connection hung every later
// request of the HTTP proxy door.
func TestProxyPoolDropWithIdleConnections(t *testing.T) {
	defer func(n int) { maxProxyTransports = n }(maxProxyTransports)
	maxProxyTransports = 1

	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }))
	defer srv.Close()
	// Closed at the end, not deferred: after a deadlock it would wait for
	// the lock for ever rather than let the test fail.
	p := &httpProxy{fd: &Server{}, transports: map[proxyKey]*http.Transport{}, conns: map[*proxyConn]struct{}{}}

	old, err := p.transport(proxyKey{"billing", "acme", "api"})
	if err != nil {
		t.Fatal(err)
	}
	var closes int
	old.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &lockingConn{Conn: c, p: p, closes: &closes}, nil
	}
	resp, err := (&http.Client{Transport: old}).Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close() // the connection goes back to old's idle pool

	done := make(chan error, 1)
	go func() {
		_, err := p.transport(proxyKey{"billing", "acme", "db"})
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a new pool past the cap did not come: dropping the old one's idle connection deadlocked on the proxy's lock")
	}
	p.mu.Lock()
	n := len(p.transports)
	_, kept := p.transports[proxyKey{"billing", "acme", "api"}]
	closed := closes
	p.mu.Unlock()
	if n != 1 || kept {
		t.Errorf("%d pools, the dropped one kept: %v; want only the new one", n, kept)
	}
	if closed != 1 {
		t.Errorf("the dropped pool's idle connection was closed %d times, want 1", closed)
	}
	p.close()
}
