package test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// An agent whose identity is revoked while it is connected learns why from
// the session the relay ends, on both transports: over QUIC from the
// close's reason (the Reject written before it is usually lost with the
// connection), over TCP from the Reject. The agent's line about that very
// session's end says "revoked" — it did not need its next hello, which
// the relay then refuses, once, before the agent stops.
func TestRevokedSessionEndSaysWhy(t *testing.T) {
	for _, transport := range []string{"quic", "tcp"} {
		t.Run(transport, func(t *testing.T) {
			r := startRelay(t, relayOpts{})
			r.addTenant(t, "acme")
			a := startAgent(t, r, "acme", agentOpts{transport: transport, services: map[string]string{"echo": tcpService(t, echo)},
				extra: "relay_connections: 1\n"})
			r.admin(t, "agent", "revoke", a.id, "--reason", "laptop stolen")
			wantExit(t, a.proc, 3, 20*time.Second)

			var lost []map[string]any
			for line := range strings.SplitSeq(a.out.String(), "\n") {
				var rec map[string]any
				if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == "connection to relay lost; reconnecting" {
					lost = append(lost, rec)
				}
			}
			if len(lost) != 1 {
				t.Fatalf("the agent logged %d lost sessions, want 1:\n%s", len(lost), a.out.String())
			}
			reason, _ := lost[0]["reason"].(string)
			for _, want := range []string{"relay closed the session: revoked: ", "laptop stolen"} {
				if !strings.Contains(reason, want) {
					t.Errorf("the agent said its session ended with %q, want it to say %q", reason, want)
				}
			}
			if lost[0]["transport"] != transport {
				t.Errorf("the lost session's transport is %v, want %s", lost[0]["transport"], transport)
			}
			// One hello welcomed, one refused after the session ended.
			out := r.out.String()
			if connected, refused := strings.Count(out, `"msg":"agent connected"`), strings.Count(out, `"msg":"agent refused"`); connected != 1 || refused != 1 {
				t.Errorf("the relay welcomed %d and refused %d hellos of the agent, want 1 and 1", connected, refused)
			}
		})
	}
}
