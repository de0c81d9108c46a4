package store

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/internal/pgtest"
)

// silencingProxy passes TCP connections on to a server until silence,
// after which the connections open then go silent: what they are sent
// is read and dropped, nothing comes back, and nothing is closed, as
// when the server behind a proxy or a load balancer vanished without a
// reset. Connections made afterwards pass again.
type silencingProxy struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu     sync.Mutex
	conns  []net.Conn
	silent map[net.Conn]bool // by the connection accepted
}

func startSilencingProxy(t *testing.T, target string) *silencingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &silencingProxy{ln: ln, target: target, silent: map[net.Conn]bool{}}
	p.wg.Go(p.accept)
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *silencingProxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		u, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, u)
		p.mu.Unlock()
		p.wg.Go(func() { p.pipe(c, u, c) })
		p.wg.Go(func() { p.pipe(u, c, c) })
	}
}

// pipe copies from src to dst until either fails, dropping what it reads
// once the connection accepted as client is silent.
func (p *silencingProxy) pipe(src, dst, client net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			silent := p.silent[client]
			p.mu.Unlock()
			if !silent {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				if tc, ok := dst.(*net.TCPConn); ok {
					tc.CloseWrite()
				}
			}
			return
		}
	}
}

// silence makes every connection open now silent.
func (p *silencingProxy) silence() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := 0; i < len(p.conns); i += 2 {
		p.silent[p.conns[i]] = true
	}
}

// A listen connection whose server goes silent without closing it (a
// failover whose old primary vanished behind a proxy) is noticed within
// listenCheckEvery plus listenPingTimeout: the listener reports it, and
// connects again, which has the follower read its whole state again.
func TestListenNoticesSilentConnection(t *testing.T) {
	pg := pgtest.Shared(t)
	dsn := pg.CreateDatabase(t)
	s, err := OpenPostgres(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	p := startSilencingProxy(t, pg.Addr())
	pdsn := strings.Replace(dsn, pg.Addr(), p.ln.Addr().String(), 1)

	defer func(every, ping time.Duration) { listenCheckEvery, listenPingTimeout = every, ping }(listenCheckEvery, listenPingTimeout)
	// A live connection must answer every ping within listenPingTimeout
	// while the test watches it deliver: 300 ms, as this test had it, is
	// a round trip to a PostgreSQL on a loaded machine (the listener then
	// failed on a live connection). A second still has the silence
	// noticed within 1.3 s, well inside the 5 s the test gives it.
	listenCheckEvery, listenPingTimeout = 300*time.Millisecond, time.Second

	wakes := make(chan struct{}, 100)
	reconnects := make(chan struct{}, 10)
	failures := make(chan error, 10)
	lctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() {
		postgresDialect{dsn: pdsn}.listen(lctx,
			func() { wakes <- struct{}{} },
			func() { reconnects <- struct{}{} },
			func(err error) { failures <- err })
	})
	waitFor := func(ch <-chan struct{}, what string, within time.Duration) {
		t.Helper()
		select {
		case <-ch:
		case <-time.After(within):
			t.Fatalf("%s: nothing within %v", what, within)
		}
	}
	waitFor(wakes, "the wake-up once listening", 5*time.Second)
	// Quiet for longer than listenCheckEvery, then a notice: the
	// connection that was pinged still delivers.
	time.Sleep(1200 * time.Millisecond)
	for len(wakes) > 0 {
		<-wakes
	}
	if err := s.AddTenant(ctx, "acme", t0); err != nil {
		t.Fatal(err)
	}
	waitFor(wakes, "the notice of a change", 5*time.Second)
	select {
	case err := <-failures:
		t.Fatalf("the listener failed on a live connection: %v", err)
	default:
	}

	p.silence()
	silenced := time.Now()
	select {
	case err := <-failures:
		t.Logf("noticed after %v: %v", time.Since(silenced).Round(time.Millisecond), err)
	case <-time.After(5 * time.Second):
		t.Fatalf("the listener did not notice within 5 s that its connection went silent (it waits for a notice on it with no bound)")
	}
	waitFor(reconnects, "the reconnection after the silent connection (the follower's full resync)", 5*time.Second)
}
