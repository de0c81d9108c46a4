package relay

import (
	"context"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/relay/internal/store"
)

// Which sessions of an agent may renew: one on the newest certificate;
// one of the same agent process (its boot id) still on the certificate a
// renewal over another relay replaced; one admitted on the replaced
// certificate during the overlap (the agent stopped before installing the
// new one). Not one on an older certificate, nor one of another process
// admitted on the replaced certificate before the renewal (a copy of the
// key pair). The store records, each time, the certificate the agent
// process holds as the one replaced.
func TestRenewalNeedsTheNewestCertificate(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	r, err := New(Config{DataDir: dir, AgentListen: "127.0.0.1:0", DisableQUIC: true, SOCKSListen: Off, ConnectListen: Off})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	r.audit.Start()
	defer r.audit.Stop()
	openAdmin(t, dir, "acme")
	id := identity.Agent{TrustDomain: r.TrustDomain(), Tenant: "acme", ID: "a1"}
	// Enrolled an hour ago with a two-hour certificate: due for renewal.
	now := time.Now()
	if err := r.dir.Store.AddAgent(ctx, store.Agent{ID: id.ID, Tenant: id.Tenant, CreatedAt: now, CertSerial: "aa",
		CertIssuedAt: now.Add(-time.Hour), CertNotAfter: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	renew := func(s *renewing) string {
		t.Helper()
		resp := r.enrol.Renew(ctx, s, &protocol.RenewRequest{CSR: csrFor(t)})
		return resp.Code
	}
	record := func() store.Agent {
		t.Helper()
		rec, err := r.dir.Store.Agent(ctx, id.ID)
		if err != nil {
			t.Fatal(err)
		}
		return rec
	}
	admitted := now.Add(-30 * time.Minute)
	root := r.auth.CA().Signer().ID()

	// The agent process b1 holds two sessions (over two relays), both
	// admitted on aa. It renews over the first.
	first := &renewing{id: id, serial: "aa", at: admitted, boot: "b1", root: root}
	second := &renewing{id: id, serial: "aa", at: admitted, boot: "b1", root: root}
	copied := &renewing{id: id, serial: "aa", at: admitted, boot: "mallory", root: root}
	if code := renew(first); code != "" {
		t.Fatalf("renewal over a session on the newest certificate: %s", code)
	}
	c1 := record()
	if c1.CertSerial != first.serial || c1.PrevCertSerial != "aa" || c1.CertBootID != "b1" {
		t.Fatalf("after the first renewal: %+v; want %s newest (to b1), aa replaced", c1, first.serial)
	}

	// A copy of aa, connected before the renewal from another process:
	// no renewal.
	if code := renew(copied); code != protocol.CodeCertSuperseded.String() {
		t.Fatalf("renewal over a copy's session on the replaced certificate: %q, want certificate_superseded", code)
	}
	// The same process's other session, which that relay did not move
	// along: it renews, replacing the certificate the process holds.
	if code := renew(second); code != "" {
		t.Fatalf("renewal over the same process's session on the replaced certificate: %q", code)
	}
	c2 := record()
	if c2.CertSerial != second.serial || c2.PrevCertSerial != c1.CertSerial {
		t.Fatalf("after the second renewal: %+v; want %s newest, %s replaced", c2, second.serial, c1.CertSerial)
	}
	// aa is now older than the replaced certificate: nobody renews on it.
	stale := &renewing{id: id, serial: "aa", at: now, boot: "b1", root: root}
	if code := renew(stale); code != protocol.CodeCertSuperseded.String() {
		t.Fatalf("renewal over a session on an older certificate: %q, want certificate_superseded", code)
	}

	// The agent stopped before installing the newest, and came back (a
	// new process) on the replaced one during the overlap: it renews.
	back := &renewing{id: id, serial: c1.CertSerial, at: time.Now(), boot: "b2", root: root}
	if code := renew(back); code != "" {
		t.Fatalf("renewal over a session admitted on the replaced certificate during the overlap: %q", code)
	}
	if c3 := record(); c3.CertSerial != back.serial || c3.PrevCertSerial != c1.CertSerial || c3.CertBootID != "b2" {
		t.Fatalf("after the third renewal: %+v; want %s newest (to b2), %s replaced", c3, back.serial, c1.CertSerial)
	}

	// Two renewals were not due (the first was): the burst of 3 has one
	// left.
	if code := renew(back); code != "" {
		t.Fatalf("a third renewal not due: %q, want renewed", code)
	}
	if code := renew(back); code != protocol.CodeRateLimited.String() {
		t.Fatalf("a fourth renewal not due: %q, want rate_limited", code)
	}
}
