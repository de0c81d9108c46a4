package quic_test

import (
	"context"
	"net"
	"testing"
	"time"

	quicgo "github.com/quic-go/quic-go"
	"go.uber.org/goleak"

	"github.com/tetherhq/tether/protocol/transport"
	"github.com/tetherhq/tether/protocol/transport/quic"
	"github.com/tetherhq/tether/protocol/transport/transporttest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func pair(t *testing.T) (transport.Session, transport.Session) {
	serverTLS, clientTLS := transporttest.TLSConfigs(t)
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	tr := &quicgo.Transport{Conn: quic.PacketConn(udp)}
	ln, err := tr.Listen(serverTLS, quic.Config(1000))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ln.Close()
		tr.Close()
		udp.Close()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	accepted := make(chan *quicgo.Conn, 1)
	go func() {
		c, err := ln.Accept(ctx)
		if err != nil {
			t.Error(err)
		}
		accepted <- c
	}()
	client, err := quic.Dial(ctx, udp.LocalAddr().String(), clientTLS, quic.Config(1000))
	if err != nil {
		t.Fatal(err)
	}
	sc := <-accepted
	if sc == nil {
		t.FailNow()
	}
	return client, quic.NewSession(sc)
}

// TestConformance runs the transport contract over QUIC with both ends
// as the relay and agent set them up (with receive offload where the
// system has it) and with it turned off, as on systems without it.
func TestConformance(t *testing.T) {
	t.Run("offload", func(t *testing.T) { transporttest.Run(t, pair) })
	t.Run("plain", func(t *testing.T) {
		t.Setenv("TETHER_QUIC_DISABLE_GRO", "1")
		transporttest.Run(t, pair)
	})
}
