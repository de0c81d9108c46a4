package main

import (
	"net"
	"strings"
	"testing"

	"github.com/tetherhq/tether/relay"
)

// A demo front door whose port is busy moves to a free port; the other
// door keeps the address it was given.
func TestDemoMovesOnlyTheBusyDoor(t *testing.T) {
	for _, busyDoor := range []string{"SOCKS5", "HTTP CONNECT"} {
		t.Run(busyDoor, func(t *testing.T) {
			busy, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer busy.Close()
			cfg := relay.Config{DataDir: t.TempDir(), AgentListen: "127.0.0.1:0", SOCKSListen: "127.0.0.1:0", ConnectListen: "127.0.0.1:0", DisableQUIC: true}
			if busyDoor == "SOCKS5" {
				cfg.SOCKSListen = busy.Addr().String()
			} else {
				cfg.ConnectListen = busy.Addr().String()
			}
			var stderr strings.Builder
			r, err := newDemoRelay(cfg, &stderr)
			if err != nil {
				t.Fatalf("newDemoRelay: %v", err)
			}
			defer r.Close()
			want := busy.Addr().String() + " is in use: the " + busyDoor + " door takes a free port instead\n"
			if stderr.String() != want {
				t.Errorf("stderr: got %q, want %q (the busy door alone)", stderr.String(), want)
			}
			for name, a := range map[string]net.Addr{"SOCKS5": r.SOCKSAddr(), "HTTP CONNECT": r.ConnectAddr()} {
				if a == nil || a.String() == busy.Addr().String() {
					t.Errorf("%s door at %v, want a free port", name, a)
				}
			}
		})
	}
}
