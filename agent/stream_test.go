package agent

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
)

// TestAnswerAfterSlowDial: a dial of the service that ends after the
// stream header's deadline still gets its answer to the relay, over QUIC
// and over TCP: the typed refusal of a dial that ran into dial_timeout
// (not a reset, which the relay takes for a failed connection and tries
// another), and the OK of a dial that succeeded late, with the stream
// then carrying bytes.
func TestAnswerAfterSlowDial(t *testing.T) {
	old := headerTimeout
	headerTimeout = 300 * time.Millisecond
	t.Cleanup(func() { headerTimeout = old })
	for _, transport := range []string{TransportQUIC, TransportTCP} {
		t.Run(transport, func(t *testing.T) {
			ca := newTestCA(t)
			r := newTestRelay(t, ca, "r1", "127.0.0.1", false)
			echo := echoService(t)
			const black = "192.0.2.1:5432" // TEST-NET-1: stands for a host that drops SYNs
			// dial_timeout is well past the late accept (twice the
			// header's deadline, 600 ms): 1 s left 400 ms for its timer
			// and a loopback dial, which a loaded machine can take.
			runClusterAgent(t, ca, Config{Relays: []string{r.addr}, Transport: transport, RelayConnections: 1,
				DialTimeout: 2 * time.Second,
				Services:    map[string]Service{"slow": {Address: echo}, "dead": {Address: black}},
				DialService: func(ctx context.Context, network, addr string) (net.Conn, error) {
					if addr == black {
						<-ctx.Done() // no answer: the dial runs into dial_timeout
						return nil, &net.OpError{Op: "dial", Net: network, Err: ctx.Err()}
					}
					// A service that accepts after twice the header's
					// deadline, within dial_timeout.
					select {
					case <-time.After(2 * headerTimeout):
					case <-ctx.Done():
						return nil, ctx.Err()
					}
					var d net.Dialer
					return d.DialContext(ctx, network, addr)
				}})
			waitFor(t, 10*time.Second, "a session", func() error {
				if len(r.open()) != 1 {
					return errNotYet
				}
				return nil
			})
			c := r.open()[0]
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()

			_, err := c.openStream(ctx, "dead")
			var pe *protocol.Error
			if !errors.As(err, &pe) || pe.Code != protocol.CodeTimeout {
				t.Fatalf("stream to a service that does not answer: %v (%T), want the agent's timeout refusal", err, err)
			}

			st, err := c.openStream(ctx, "slow")
			if err != nil {
				t.Fatalf("stream to a service that accepts late: %v, want OK", err)
			}
			defer st.Close()
			st.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := st.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, 4)
			if _, err := io.ReadFull(st, got); err != nil || string(got) != "ping" {
				t.Fatalf("echo through the late stream: %q, %v", got, err)
			}
		})
	}
}
