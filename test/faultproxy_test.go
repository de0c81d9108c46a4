package test

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// gatedProxy forwards TCP and UDP from one loopback port to target (the
// same port number for both, as the relay uses). While *blocked is true,
// every UDP datagram is dropped in both directions, as a firewall that
// blocks UDP would; TCP always passes.
func gatedProxy(t *testing.T, target string) (addr string, blocked *atomic.Bool) {
	t.Helper()
	blocked = new(atomic.Bool)
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := tl.Addr().(*net.TCPAddr).Port
	ul, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	if err != nil {
		tl.Close()
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex // guards conns and upstream
	conns := map[io.Closer]bool{}
	upstream := map[string]*net.UDPConn{}
	track := func(c io.Closer) {
		mu.Lock()
		conns[c] = true
		mu.Unlock()
	}

	wg.Go(func() { // TCP
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			track(c)
			track(u)
			wg.Go(func() { io.Copy(u, c); u.(*net.TCPConn).CloseWrite() })
			wg.Go(func() { io.Copy(c, u); c.(*net.TCPConn).CloseWrite() })
		}
	})
	raddr, err := net.ResolveUDPAddr("udp", target)
	if err != nil {
		t.Fatal(err)
	}
	wg.Go(func() { // UDP, one upstream socket per client address
		buf := make([]byte, 64<<10)
		for {
			n, from, err := ul.ReadFromUDP(buf)
			if err != nil {
				return
			}
			if blocked.Load() {
				continue
			}
			mu.Lock()
			up := upstream[from.String()]
			if up == nil {
				if up, err = net.DialUDP("udp", nil, raddr); err != nil {
					mu.Unlock()
					continue
				}
				upstream[from.String()] = up
				conns[up] = true
				wg.Go(func() {
					b := make([]byte, 64<<10)
					for {
						n, err := up.Read(b)
						if err != nil {
							return
						}
						if !blocked.Load() {
							ul.WriteToUDP(b[:n], from)
						}
					}
				})
			}
			mu.Unlock()
			up.Write(buf[:n])
		}
	})
	t.Cleanup(func() {
		tl.Close()
		ul.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return tl.Addr().String(), blocked
}
