package client_test

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// tcpProxy stands between a Forward and the relay, so that tests can see
// the connections the Forward makes to the relay, take the relay away
// (reset every connection, as a restarting relay does) and add latency.
type tcpProxy struct {
	ln     net.Listener
	target string
	delay  time.Duration // added one way, in each direction

	down     atomic.Bool // reset new connections at once
	accepted *counter    // connections accepted
	resets   *counter    // connections reset because down
	closed   *counter    // connections that ended
	relayEnd *counter    // connections whose relay side ended (sent FIN)

	mu    sync.Mutex // guards conns
	conns []*proxied
	wg    sync.WaitGroup
}

// proxied is one connection through the proxy.
type proxied struct {
	acceptedAt time.Time
	firstByte  atomic.Int64 // unix nanoseconds of the first byte from the client; 0 before
	client     net.Conn
	relay      net.Conn
}

func newTCPProxy(t testing.TB, target string, delay time.Duration) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln, target: target, delay: delay, accepted: &counter{}, resets: &counter{}, closed: &counter{}, relayEnd: &counter{}}
	p.wg.Go(p.accept)
	t.Cleanup(p.close)
	return p
}

func (p *tcpProxy) addr() string { return p.ln.Addr().String() }

func (p *tcpProxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if p.down.Load() {
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
			p.resets.add()
			continue
		}
		pc := &proxied{acceptedAt: time.Now(), client: c}
		r, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		pc.relay = r
		p.mu.Lock()
		p.conns = append(p.conns, pc)
		p.mu.Unlock()
		p.accepted.add()
		p.wg.Go(func() {
			var inner sync.WaitGroup
			inner.Go(func() { p.pipe(r, c, &pc.firstByte) })
			p.pipe(c, r, nil)
			p.relayEnd.add()
			inner.Wait()
			c.Close()
			r.Close()
			p.closed.add()
		})
	}
}

// pipe copies src to dst, each chunk delay later, then half-closes dst;
// after an error it closes both.
func (p *tcpProxy) pipe(dst, src net.Conn, first *atomic.Int64) {
	type chunk struct {
		due  time.Time
		data []byte
	}
	ch := make(chan chunk, 1024)
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(ch)
		for {
			buf := make([]byte, 32<<10)
			n, err := src.Read(buf)
			if n > 0 {
				if first != nil && first.Load() == 0 {
					first.Store(time.Now().UnixNano())
				}
				ch <- chunk{due: time.Now().Add(p.delay), data: buf[:n]}
			}
			if err != nil {
				return
			}
		}
	})
	failed := false
	for c := range ch {
		if failed {
			continue
		}
		if d := time.Until(c.due); d > 0 {
			time.Sleep(d) // the latency being simulated
		}
		if _, err := dst.Write(c.data); err != nil {
			failed = true
			dst.Close()
			src.Close()
		}
	}
	wg.Wait()
	if !failed {
		dst.(*net.TCPConn).CloseWrite()
	}
}

// carrying returns the connections on which the client sent something.
func (p *tcpProxy) carrying() []*proxied {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []*proxied
	for _, c := range p.conns {
		if c.firstByte.Load() != 0 {
			out = append(out, c)
		}
	}
	return out
}

// open returns how many connections are open through the proxy.
func (p *tcpProxy) open() int { return p.accepted.get() - p.closed.get() }

func (p *tcpProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.client.Close()
		c.relay.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}
