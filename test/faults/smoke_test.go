//go:build linux

package faults

import (
	"context"
	"testing"
	"time"

	"github.com/tetherhq/tether/test/internal/e2e"
)

// The topology carries the tunnel both ways through the router, over QUIC
// and over TCP, and the router sees the packets.
func TestPathThroughRouter(t *testing.T) {
	e := newEnv(t, "acme")
	web := e.httpService(t, hello("hello from the LAN"))
	for _, transport := range []string{"quic", "tcp"} {
		a := e.startAgent(t, "acme", e2e.AgentOptions{Transport: transport, Services: map[string]string{"web": web}, Extra: "connections: 1\n"})
		before := e.router.stats.Read.Load()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		body, err := e.get(ctx, "web", "acme")
		cancel()
		if err != nil || body != "hello from the LAN" {
			t.Fatalf("%s: got %q, %v; want the service's answer", transport, body, err)
		}
		if n := e.router.stats.Read.Load() - before; n < 4 {
			t.Errorf("%s: the router saw %d packets of the stream, want the whole exchange", transport, n)
		}
		if err := a.Stop(15 * time.Second); err != nil {
			t.Fatalf("%s: agent stop: %v", transport, err)
		}
	}
	t.Logf("router: %v", &e.router.stats)
}
