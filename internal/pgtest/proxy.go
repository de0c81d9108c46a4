package pgtest

import (
	"net"
	"sync"
	"testing"
)

// Proxy forwards TCP connections to a server (a PostgreSQL server, for a
// relay's store) until paused: then it forwards nothing either way and
// connects nothing new, but closes nothing either, as a network path
// that drops every packet would; once resumed, what was held goes
// through. It stops, closing every connection, when the test ends.
type Proxy struct {
	// Addr is where clients connect (127.0.0.1, a free port).
	Addr string

	mu      sync.Mutex    // guards resumed
	resumed chan struct{} // closed while forwarding; replaced by Pause
	done    chan struct{} // closed when the test ends
}

// NewProxy starts a proxy to target (host:port).
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{Addr: l.Addr().String(), resumed: make(chan struct{}), done: make(chan struct{})}
	close(p.resumed)
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
			c, err := l.Accept()
			if err != nil {
				return
			}
			track(c)
			wg.Go(func() {
				if !p.wait() {
					return
				}
				u, err := net.Dial("tcp", target)
				if err != nil {
					c.Close()
					return
				}
				track(u)
				wg.Go(func() { p.copy(u, c) })
				wg.Go(func() { p.copy(c, u) })
			})
		}
	})
	t.Cleanup(func() {
		close(p.done)
		l.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return p
}

// Pause stops forwarding (a no-op while paused).
func (p *Proxy) Pause() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.resumed:
		p.resumed = make(chan struct{})
	default: // paused already
	}
}

// Resume forwards again, what was held first (a no-op while forwarding).
func (p *Proxy) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.resumed: // forwarding already
	default:
		close(p.resumed)
	}
}

// wait waits while the proxy is paused; false when the test ended.
func (p *Proxy) wait() bool {
	p.mu.Lock()
	resumed := p.resumed
	p.mu.Unlock()
	select {
	case <-resumed:
		return true
	case <-p.done:
		return false
	}
}

// copy copies from src to dst, holding what it read while paused.
func (p *Proxy) copy(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.wait() {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				src.Close()
				return
			}
		}
		if err != nil {
			if p.wait() {
				dst.(*net.TCPConn).CloseWrite()
			}
			return
		}
	}
}
