package tcp_test

import (
	"context"
	"crypto/tls"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tetherhq/tether/protocol/transport"
	"github.com/tetherhq/tether/protocol/transport/tcp"
	"github.com/tetherhq/tether/protocol/transport/transporttest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func pair(t *testing.T) (transport.Session, transport.Session) {
	serverTLS, clientTLS := transporttest.TLSConfigs(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		s   *tcp.Session
		err error
	}
	accepted := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- res{err: err}
			return
		}
		tc := tls.Server(tcp.NewRawConn(c), serverTLS)
		if err := tc.Handshake(); err != nil {
			accepted <- res{err: err}
			return
		}
		s, err := tcp.Server(tc, nil)
		accepted <- res{s, err}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client, err := tcp.Dial(ctx, nil, ln.Addr().String(), clientTLS, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := <-accepted
	if r.err != nil {
		t.Fatal(r.err)
	}
	return client, r.s
}

func TestConformance(t *testing.T) { transporttest.Run(t, pair) }

// TestConformanceOverPipe runs the suite over an in-memory pipe: the same
// yamux code without TLS or sockets.
func TestConformanceOverPipe(t *testing.T) {
	transporttest.Run(t, func(t *testing.T) (transport.Session, transport.Session) {
		a, b := net.Pipe()
		c, err := tcp.Client(a, nil)
		if err != nil {
			t.Fatal(err)
		}
		s, err := tcp.Server(b, nil)
		if err != nil {
			t.Fatal(err)
		}
		return c, s
	})
}
