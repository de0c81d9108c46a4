package throttle

import (
	"errors"
	"net"
	"sync"
	"testing"
	"time"
)

// TestLimitListener: a limited listener hands out connections within its
// bounds per address, per network and in all, closes the others at once
// with the reason counted, and gives a connection's slots back when it is
// closed, once however many times.
func TestLimitListener(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := make(chan string, 16)
	ln := LimitListener(inner, ListenerLimits{PerAddress: 2, PerNetwork: 3, Total: 4}, func(reason string) { refused <- reason })
	accepted := make(chan net.Conn, 16)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	})
	var mine []net.Conn // the client ends
	defer func() {
		ln.Close()
		wg.Wait()
		close(accepted)
		for c := range accepted {
			c.Close()
		}
		for _, c := range mine {
			c.Close()
		}
	}()
	var held []net.Conn // the relay's ends
	// dial connects from src and reports the relay's end when accepted,
	// or the reason it was turned away (and checks that the client sees
	// its connection closed without a byte).
	dial := func(src string) (net.Conn, string) {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
		c, err := d.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		mine = append(mine, c)
		select {
		case s := <-accepted:
			held = append(held, s)
			return s, ""
		case reason := <-refused:
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			var b [1]byte
			var ne net.Error
			if n, err := c.Read(b[:]); n != 0 || err == nil || (errors.As(err, &ne) && ne.Timeout()) {
				t.Fatalf("a connection turned away (%s): read %d bytes, %v; want it closed", reason, n, err)
			}
			return nil, reason
		case <-time.After(10 * time.Second):
			t.Fatalf("a connection from %s neither accepted nor turned away", src)
			return nil, ""
		}
	}
	for i, step := range []struct {
		src, want string
	}{
		{"127.0.0.2", ""},
		{"127.0.0.2", ""},
		{"127.0.0.2", RefusedSource}, // its address holds 2
		{"127.0.0.3", ""},
		{"127.0.0.4", RefusedSource}, // its network (127.0.0.0/24) holds 3
		{"127.0.1.2", ""},
		{"127.0.2.2", RefusedFull}, // the listener holds 4
	} {
		if _, got := dial(step.src); got != step.want {
			t.Fatalf("step %d, from %s: turned away for %q, want %q", i+1, step.src, got, step.want)
		}
	}
	// A connection closed (twice) gives its slots back once.
	held[0].Close()
	held[0].Close()
	if n := ln.(*limitedListener).total.InUse(); n != 3 {
		t.Fatalf("%d connections counted after one of 4 was closed twice, want 3", n)
	}
	if _, got := dial("127.0.0.2"); got != "" {
		t.Fatalf("from an address whose connection was closed: turned away for %q", got)
	}
	if _, got := dial("127.0.3.2"); got != RefusedFull {
		t.Fatalf("a fifth connection: turned away for %q, want %q", got, RefusedFull)
	}
}
