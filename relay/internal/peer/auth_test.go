package peer

import (
	"context"
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/internal/datadir"
	"github.com/tetherhq/tether/relay/internal/store"
	"github.com/tetherhq/tether/relay/internal/trust"
)

// The relay-to-relay listener takes only a link whose certificate is a
// relay's of the cluster's CA, valid now, and not the listener's own
// identity; an entry relay takes a link only to the relay it meant to
// reach. (Agent, backend, operator and foreign-CA certificates are
// refused too: test/TestClusterPeerListenerRefuses.)
func TestLinkIdentities(t *testing.T) {
	dir, authority, err := datadir.Open(context.Background(), t.TempDir(), datadir.Options{TrustDomain: "peer.test"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dir.Close() })
	auth := trust.NewAuthority(dir.CAStorage(), authority)
	newPeer := func(id string) *trust.Peer {
		p, err := trust.NewPeer(auth, nil, id, time.Now)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	srv := serve(t, newPeer("relay-2"))
	addr := srv.Addr().String()

	// link opens a link to srv presenting cert, and reports whether srv
	// took it: srv counts the handshake as ok or failed once the client's
	// side of it is done (in TLS 1.3 the server checks the client's
	// certificate after that).
	link := func(t *testing.T, cert tls.Certificate) bool {
		t.Helper()
		ok, failed := srv.Stats().OK.Load(), srv.Stats().Failed.Load()
		raw, err := net.DialTimeout("tcp", addr, watchdog)
		if err != nil {
			t.Fatal(err)
		}
		c := tls.Client(raw, &tls.Config{Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true,
			NextProtos: []string{trust.PeerALPN}, MinVersion: tls.VersionTLS13})
		defer c.Close()
		c.SetDeadline(time.Now().Add(watchdog))
		c.Handshake()
		waitUntil(t, "the link counted as taken or refused", func() bool {
			return srv.Stats().OK.Load() != ok || srv.Stats().Failed.Load() != failed
		})
		return srv.Stats().OK.Load() == ok+1 && srv.Stats().Failed.Load() == failed
	}
	issue := func(id string, notBefore time.Time, lifetime time.Duration) tls.Certificate {
		c, err := authority.IssuePeer(id, lifetime, notBefore)
		if err != nil {
			t.Fatal(err)
		}
		return *c
	}
	now := time.Now()
	if !link(t, issue("relay-1", now, time.Hour)) {
		t.Fatal("the listener refused relay-1's valid certificate")
	}
	if link(t, issue("relay-1", now.Add(-3*time.Hour), time.Hour)) {
		t.Error("the listener took a relay certificate that expired two hours ago")
	}
	if link(t, issue("relay-2", now, time.Hour)) {
		t.Error("the listener took a link presenting its own identity, relay-2")
	}

	// An entry relay told that relay-3 is at relay-2's address does not
	// forward relay-3's streams to relay-2.
	var h holdings
	h.set("acme", store.Holding{RelayID: "relay-3", Epoch: 1, PeerAddr: addr, Agents: 1})
	l := newLinks(t, newPeer("relay-1"), &h)
	c := carrier(t, l, "acme")
	_, err = within(t, "session to the wrong relay", func() (any, error) { return l.session(context.Background(), c.link, nil) })
	if err == nil || !strings.Contains(err.Error(), `is relay "relay-2", not "relay-3"`) {
		t.Fatalf("link to relay-3 at relay-2's address: %v, want it refused as relay-2", err)
	}
}
