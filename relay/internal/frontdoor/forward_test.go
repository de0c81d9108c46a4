package frontdoor

import (
	"strings"
	"testing"

	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/relay/internal/route"
)

func TestParseForward(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string // the forward's String, or the error's words
		ok   bool
	}{
		{"127.0.0.1:15432=db.acme@billing", "127.0.0.1:15432=db.acme@billing", true},
		{"10.1.0.5:15432=db.acme.tether:5432@billing", "10.1.0.5:15432=db.acme.tether:5432@billing", true},
		{"[::1]:80=api.acme.tether@billing", "[::1]:80=api.acme.tether@billing", true},
		{":15432=db.acme@billing", ":15432=db.acme@billing", true},
		{"127.0.0.1:15432=db.acme", "names no backend", false},
		{"db.acme@billing", `no "="`, false},
		{"127.0.0.1=db.acme@billing", "is not host:port", false},
		{"127.0.0.1:1=db@billing", "want SERVICE.TENANT", false},
		{"127.0.0.1:1=db.acme.example@billing", "want SERVICE.TENANT", false},
		{"127.0.0.1:1=db.acme@Billing!", "backend name", false},
		{"127.0.0.1:1=db.acme@", "backend name is empty", false},
		{strings.Repeat("a", 600), "of 600 bytes", false},
	} {
		f, err := ParseForward(tc.in)
		switch {
		case tc.ok && (err != nil || f.String() != tc.want):
			t.Errorf("ParseForward(%q) = %v, %v; want %s", tc.in, f, err, tc.want)
		case !tc.ok && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("ParseForward(%q) = %v, %v; want an error saying %q", tc.in, f, err, tc.want)
		}
	}
}

// FuzzParseForward: a forward comes from a flag, the environment or the
// config file. It parses into one whose target is a tenant service and
// whose backend is a valid name, or is refused; it never panics.
func FuzzParseForward(f *testing.F) {
	for _, s := range []string{"127.0.0.1:15432=db.acme@billing", "=@", "a:1=b.c@d", "[::1]:1=x.y.tether:0@z", "a:1=b.c@d@e", "a:1=b.c.d@e", ":0=.@."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		fw, err := ParseForward(s)
		if err != nil {
			return
		}
		tg, err := fw.target()
		if err != nil {
			t.Fatalf("ParseForward(%q) accepted target %q: %v", s, fw.Target, err)
		}
		if _, err := route.ParseTarget(fw.address()); err != nil || tg.Service == "" || tg.Tenant == "" {
			t.Fatalf("ParseForward(%q): address %q does not parse: %v", s, fw.address(), err)
		}
		if identity.ValidateName("backend", fw.Backend) != nil {
			t.Fatalf("ParseForward(%q) accepted backend %q", s, fw.Backend)
		}
		if again, err := ParseForward(fw.String()); err != nil || again != fw {
			t.Fatalf("ParseForward(%q).String() = %q does not parse back: %v, %v", s, fw.String(), again, err)
		}
	})
}
