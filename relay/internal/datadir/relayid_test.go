package datadir

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol/identity"
)

func TestRelayID(t *testing.T) {
	dir := t.TempDir()
	d, _, err := Open(context.Background(), dir, Options{TrustDomain: "test.tether"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	id, err := d.RelayID("")
	if err != nil || identity.ValidateName("relay id", id) != nil {
		t.Fatalf("RelayID = %q, %v", id, err)
	}
	if again, err := d.RelayID(""); err != nil || again != id {
		t.Fatalf("RelayID again = %q, %v; want the kept %q", again, err, id)
	}
	if got, err := d.RelayID("relay-2"); err != nil || got != "relay-2" {
		t.Fatalf("RelayID(relay-2) = %q, %v", got, err)
	}
	if got, _ := d.RelayID(""); got != "relay-2" {
		t.Fatalf("an explicit id was not kept: %q", got)
	}
	if _, err := d.RelayID("Relay_2"); err == nil {
		t.Fatal("an id that is not a DNS label was accepted")
	}
	os.WriteFile(d.File(relayIDFile), []byte("bad id\n"), 0o600)
	if _, err := d.RelayID(""); err == nil {
		t.Fatal("a malformed kept id was accepted")
	}
	for range 100 {
		if id := newRelayID(); identity.ValidateName("relay id", id) != nil {
			t.Fatalf("newRelayID made %q", id)
		}
	}
}
