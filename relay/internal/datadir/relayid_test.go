package datadir

import (
	"context"
	"os"
	"strings"
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

// A relay-id file cut short by a crash ("vm-5f" of "vm-5f3a2b\n") is
// refused, saying so, not taken for another id; an explicit id replaces
// it.
func TestRelayIDCutShort(t *testing.T) {
	d, _, err := Open(context.Background(), t.TempDir(), Options{TrustDomain: "test.tether"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, tc := range []struct {
		content string
		want    string // in the error; "" for none
	}{
		{"vm-5f3a2b\n", ""},
		{"vm-5f3a2b\r\n", ""},
		{"vm-5f", "cut short"},
		{"", "cut short"},
		{"vm-5f3a2b\nvm-5f\n", "more than one line"},
	} {
		if err := os.WriteFile(d.File(relayIDFile), []byte(tc.content), 0o600); err != nil {
			t.Fatal(err)
		}
		id, err := d.RelayID("")
		switch {
		case tc.want == "" && (err != nil || id != "vm-5f3a2b"):
			t.Errorf("relay-id %q: got %q, %v; want vm-5f3a2b", tc.content, id, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "--relay-id")):
			t.Errorf("relay-id %q: got %q, %v; want an error saying %q and naming --relay-id", tc.content, id, err, tc.want)
		}
	}
	if err := os.WriteFile(d.File(relayIDFile), []byte("vm-5f"), 0o600); err != nil {
		t.Fatal(err)
	}
	if id, err := d.RelayID("vm-5f"); err != nil || id != "vm-5f" {
		t.Fatalf("explicit id over a cut file: %q, %v", id, err)
	}
	if id, err := d.RelayID(""); err != nil || id != "vm-5f" {
		t.Fatalf("after an explicit id: %q, %v; want vm-5f kept", id, err)
	}
}
