package relay

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// peerHandshakes collects tether_peer_handshakes_total by outcome.
func peerHandshakes(t *testing.T, r *Relay) map[string]float64 {
	t.Helper()
	ch := make(chan prometheus.Metric, 256)
	(&liveCollector{r}).Collect(ch)
	close(ch)
	out := map[string]float64{}
	for m := range ch {
		if m.Desc() != descPeerHandshakes {
			continue
		}
		var pb dto.Metric
		if err := m.Write(&pb); err != nil {
			t.Fatal(err)
		}
		out[pb.GetLabel()[0].GetValue()] = pb.GetCounter().GetValue()
	}
	return out
}

// tether_peer_handshakes_total counts the handshakes at the relay-to-relay
// listener by outcome: silent connections beyond the bound of 8 from one
// address are source_limited. A relay without the listener reports none.
func TestPeerHandshakeMetrics(t *testing.T) {
	r := runRelay(t, Config{DataDir: t.TempDir(), AgentListen: "127.0.0.1:0", SOCKSListen: Off, ConnectListen: Off, DisableQUIC: true,
		PeerListen: "127.0.0.1:0", DrainTimeout: time.Millisecond})
	addr := r.peers.Addr().String()
	for range 10 {
		dialFrom(t, "127.0.0.1", addr)
	}
	waitUntil(t, "two silent connections from one address turned away", func() bool { return r.peers.Stats().SourceLimited.Load() == 2 })
	got := peerHandshakes(t, r)
	for outcome, want := range map[string]float64{"ok": 0, "failed": 0, "throttled": 0, "source_limited": 2} {
		if v, ok := got[outcome]; !ok || v != want {
			t.Errorf(`tether_peer_handshakes_total{outcome=%q} = %v (reported: %v), want %v`, outcome, v, ok, want)
		}
	}

	off := runRelay(t, Config{DataDir: t.TempDir(), AgentListen: "127.0.0.1:0", SOCKSListen: Off, ConnectListen: Off, DisableQUIC: true, DrainTimeout: time.Millisecond})
	if got := peerHandshakes(t, off); len(got) != 0 {
		t.Errorf("a relay without a relay-to-relay listener reports tether_peer_handshakes_total: %v", got)
	}
}
