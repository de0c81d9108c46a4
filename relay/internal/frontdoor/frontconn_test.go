package frontdoor

import (
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/tetherhq/tether/protocol"
)

func TestCheckConnectTarget(t *testing.T) {
	for _, tc := range []struct {
		target, want string // want "" when the target is well-formed
	}{
		{"db.acme.tether:5432", ""},
		{"DB.Acme.Tether.:1", ""},
		{"[::1]:80", ""}, // well-formed; not a tether address (ParseTarget says so)
		{"", "empty"},
		{"db\x00.acme.tether:80", "control character"},
		{"db.acme.tether :80", "control character or space"},
		{"db.acme.tether:http", `port "http" is not a number`},
		{"db.acme.tether:0", ""}, // the port is ignored; clients without one send 0
		{"db.acme.tether:65536", "from 0 to 65535"},
		{"db.acme.tether:+80", "from 0 to 65535"},
		{"db.acme.tether", "not host:port"},
		{"db.acme.tether:", "from 0 to 65535"},
		{"user@db.acme.tether:80", "user information"},
		{":80", "empty host"},
		{"/rpc", "not host:port"},
		{"http://db.acme.tether:80", "not host:port"},
		{strings.Repeat("a", 254) + ":80", "host of 254 bytes"},
	} {
		err := checkConnectTarget(tc.target)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("checkConnectTarget(%q) = %v, want nil", tc.target, err)
		case tc.want != "" && (err == nil || !errors.Is(err, protocol.ErrBadRequest) || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("checkConnectTarget(%q) = %v, want bad_request saying %q", tc.target, err, tc.want)
		}
	}
}

// FuzzCheckConnectTarget: a CONNECT target from the network is either
// host:port with a host of 1 to 253 bytes and a port from 0 to 65535, and
// nothing else, or refused as bad_request with a one-line message.
func FuzzCheckConnectTarget(f *testing.F) {
	for _, s := range []string{"db.acme.tether:5432", "[::1]:80", "db\x00.acme.tether:80", "db.acme.tether:http",
		"user@db.acme.tether:80", ":80", "", "db.acme.tether", "[::1%eth0]:1", "a:b:c", "db.acme.tether:0080"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, target string) {
		err := checkConnectTarget(target)
		if err != nil {
			if !errors.Is(err, protocol.ErrBadRequest) || strings.ContainsAny(err.Error(), "\r\n") {
				t.Fatalf("checkConnectTarget(%q) = %q: want a one-line bad_request", target, err)
			}
			return
		}
		host, port, serr := net.SplitHostPort(target)
		_, perr := strconv.ParseUint(port, 10, 16)
		if serr != nil || host == "" || len(host) > 253 || perr != nil || strings.ContainsAny(target, "@/?#") {
			t.Fatalf("checkConnectTarget accepted %q", target)
		}
		for _, b := range []byte(target) {
			if b <= ' ' || b == 0x7f {
				t.Fatalf("checkConnectTarget accepted %q, with a control character", target)
			}
		}
	})
}
