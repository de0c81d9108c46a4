package route_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/relay/internal/route"
)

// FuzzParseTarget: any address a backend sends either parses into two
// valid DNS labels or is refused as bad_request; it never panics, and a
// parsed target formats back to an address that parses the same.
func FuzzParseTarget(f *testing.F) {
	for _, s := range []string{
		"db.acme.tether:5432", "DB.Acme.Tether.:1", "web.acme.tether", "a.b.c.tether:1",
		"example.com:80", "[::1]:80", ".acme.tether:1", "db..tether:1", "db.acme.tether:", "-x.acme.tether:1",
		// Malformed requests front doors receive.
		"db\x00.acme.tether:80", "db.acme.tether:http", "user@db.acme.tether:80", ":80", "", "db.acme.tether:99999",
		"db.acme.tether:-1", strings.Repeat("a", 300) + ".acme.tether:80", "db.acme.tether:80:80", "db.acme.tether\r\n:80",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, addr string) {
		tg, err := route.ParseTarget(addr)
		if err != nil {
			if !errors.Is(err, protocol.ErrBadRequest) {
				t.Fatalf("ParseTarget(%q) error %v is not bad_request", addr, err)
			}
			if strings.ContainsAny(err.Error(), "\r\n") {
				t.Fatalf("ParseTarget(%q) error %q is not one line", addr, err)
			}
			return
		}
		if identity.ValidateName("service", tg.Service) != nil || identity.ValidateName("tenant", tg.Tenant) != nil {
			t.Fatalf("ParseTarget(%q) = %+v with an invalid name", addr, tg)
		}
		again, err := route.ParseTarget(tg.Service + "." + tg.Tenant + ".tether:1")
		if err != nil || again != tg {
			t.Fatalf("round trip of %+v: %+v, %v", tg, again, err)
		}
		if strings.ContainsAny(tg.Service+tg.Tenant, ".:/ ") {
			t.Fatalf("ParseTarget(%q) = %+v contains separators", addr, tg)
		}
	})
}
