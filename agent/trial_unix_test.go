//go:build unix

package agent

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
)

// TestTrialResetsStreams: the trial of a new binary, connected to a relay
// that opens a stream on its session (as a relay from before trials were
// kept out of routing may), resets the stream without a reply, over QUIC
// and over TCP: the relay reads a failure of the connection, not a
// refusal, and tries another; the service is never dialled.
//
// The trial's marker is a named pipe, so that its write of it, right after
// the Welcome, waits until the test reads it: the trial is connected, and
// not yet exiting, while the relay opens the stream.
func TestTrialResetsStreams(t *testing.T) {
	for _, transport := range []string{TransportQUIC, TransportTCP} {
		t.Run(transport, func(t *testing.T) {
			ca := newTestCA(t)
			r := newTestRelay(t, ca, "r1", "127.0.0.1", false)
			echo := echoService(t)
			marker := filepath.Join(t.TempDir(), "trial")
			if err := syscall.Mkfifo(marker, 0o600); err != nil {
				t.Skipf("named pipe: %v", err)
			}
			var dials atomic.Int32
			runClusterAgent(t, ca, Config{Relays: []string{r.addr}, Transport: transport, RelayConnections: 1,
				DialTimeout: time.Second, DrainTimeout: time.Second, UpdateTrial: marker, Version: "v2.0.0",
				Services: map[string]Service{"web": {Address: echo}},
				DialService: func(ctx context.Context, network, addr string) (net.Conn, error) {
					dials.Add(1)
					var d net.Dialer
					return d.DialContext(ctx, network, addr)
				}})
			released := false
			t.Cleanup(func() { // before the agent's own cleanup waits for it to stop
				if !released {
					// A reader that does not wait for a writer: the
					// trial's write goes into the pipe, and it exits.
					if f, err := os.OpenFile(marker, os.O_RDWR, 0); err == nil {
						time.Sleep(100 * time.Millisecond)
						f.Close()
					}
				}
			})
			waitFor(t, 10*time.Second, "the trial's session", func() error {
				if len(r.open()) != 1 {
					return errNotYet
				}
				return nil
			})
			c := r.open()[0]
			if !slices.Contains(c.hello.Capabilities, protocol.CapUpdateTrial) {
				t.Fatalf("hello capabilities %v, want %s", c.hello.Capabilities, protocol.CapUpdateTrial)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			st, err := c.openStream(ctx, "web")
			var pe *protocol.Error
			switch {
			case err == nil:
				st.Close()
				t.Errorf("the trial served the stream, want it reset")
			case errors.As(err, &pe):
				t.Errorf("the trial refused the stream: %v; want it reset without a reply (a refusal goes to the client, a reset has the relay try another connection)", err)
			case ctx.Err() != nil:
				t.Errorf("no answer from the trial: %v; want a reset at once", err)
			}
			if n := dials.Load(); n != 0 {
				t.Errorf("the trial dialled the service %d times, want never", n)
			}

			// The trial, released, says it connected and exits.
			released = true
			got, err := os.ReadFile(marker)
			if err != nil || string(got) != "v2.0.0" {
				t.Fatalf("trial marker: %q, %v; want the trial's version", got, err)
			}
		})
	}
}
