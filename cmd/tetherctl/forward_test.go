package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

// tetherctl forward warns that a credential crosses the network in the
// clear when the relay is not on loopback and its TLS door is not used:
// an API key, and a bearer token alike.
func TestForwardWarnsOfPlaintextCredential(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    forwardOpts
		want string
	}{
		{"api key", forwardOpts{backend: "billing", apiKeyEnv: "k"}, "the API key goes to the relay unencrypted"},
		{"bearer token", forwardOpts{bearerEnv: "eyJ.x.y"}, "the bearer token goes to the relay unencrypted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := tc.o
			o.relay = "192.0.2.1:3128" // not loopback; never dialled
			o.maps = []string{"127.0.0.1:0=db.acme.tether:5432"}
			o.relayWait, o.drain, o.spares = time.Second, 0, 0
			o.logLevel, o.logFormat = "info", "text"
			ctx, cancel := context.WithCancel(context.Background())
			cancel() // stop once the listeners are up
			var stderr bytes.Buffer
			if err := forward(ctx, o, nil, &stderr); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(stderr.String(), tc.want) {
				t.Fatalf("stderr:\n%s\nwant %q", stderr.String(), tc.want)
			}
		})
	}
}
