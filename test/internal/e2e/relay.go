package e2e

import (
	"cmp"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/client"
)

// RelayOptions configure StartRelay.
type RelayOptions struct {
	// AgentHost is the address the agent port binds; default 127.0.0.1.
	// The front doors always listen on 127.0.0.1.
	AgentHost string
	// AgentPort is the agent port; default one free on AgentHost.
	AgentPort int
	// Transports is --transports; default both.
	Transports string
	// Heartbeat is --heartbeat; zero leaves the relay's default.
	Heartbeat time.Duration
	// Extra are more serve flags.
	Extra []string
	// Env are more environment variables (NAME=value) for the relay.
	Env []string
}

// Relay is a tether-relay serve process and its data directory.
type Relay struct {
	*Proc
	Bin         string
	DataDir     string
	AgentAddr   string
	SocksAddr   string
	ConnectAddr string
}

// StartRelay initialises a data directory and runs bin (tether-relay)
// serve on free ports, with JSON logs at debug level. A port found free
// can be taken by another test's socket before the relay binds it; the
// relay then exits saying so, and it is started again on other ports (at
// most twice).
func StartRelay(t testing.TB, bin string, o RelayOptions) *Relay {
	t.Helper()
	o.Transports = cmp.Or(o.Transports, "quic,tcp")
	o.AgentHost = cmp.Or(o.AgentHost, "127.0.0.1")
	for attempt := 1; ; attempt++ {
		port := o.AgentPort
		if port == 0 {
			port = FreePort(t, o.AgentHost)
		}
		r := &Relay{
			Bin:         bin,
			DataDir:     t.TempDir(),
			AgentAddr:   net.JoinHostPort(o.AgentHost, fmt.Sprint(port)),
			SocksAddr:   FreeAddr(t, "127.0.0.1"),
			ConnectAddr: FreeAddr(t, "127.0.0.1"),
		}
		args := []string{bin, "serve", "--data-dir", r.DataDir, "--agent-listen", r.AgentAddr,
			"--socks-listen", r.SocksAddr, "--connect-listen", r.ConnectAddr,
			"--transports", o.Transports, "--log-format", "json", "--log-level", "debug"}
		if o.Heartbeat > 0 {
			args = append(args, "--heartbeat", o.Heartbeat.String())
		}
		args = append(args, o.Extra...)
		r.Proc = Start(t, "tether-relay", o.Env, args...)
		const serving = `"msg":"relay serving"`
		if r.WaitOutputOrExit(serving, 20*time.Second) {
			return r
		}
		if attempt < 3 && strings.Contains(r.Output(), "address already in use") {
			t.Logf("tether-relay: a port was taken between choosing and binding it; starting again on others:\n%s", r.Output())
			continue
		}
		t.Fatalf("%s exited (%v) before printing %q", r.Name, r.Err(), serving)
	}
}

// Admin runs an admin subcommand on the relay's data directory and
// returns its trimmed stdout.
func (r *Relay) Admin(t testing.TB, args ...string) string {
	t.Helper()
	return MustRun(t, append(append([]string{r.Bin}, args...), "--data-dir", r.DataDir)...)
}

// AddTenant creates a tenant.
func (r *Relay) AddTenant(t testing.TB, name string) {
	t.Helper()
	r.Admin(t, "tenant", "add", name)
}

// Token creates a join token for tenant.
func (r *Relay) Token(t testing.TB, tenant string, extra ...string) string {
	t.Helper()
	return r.Admin(t, append([]string{"token", "create", "--tenant", tenant}, extra...)...)
}

// Backend creates a backend credential allowed to reach tenants and
// returns a Dialer using it.
func (r *Relay) Backend(t testing.TB, name string, tenants ...string) *client.Dialer {
	t.Helper()
	key := r.Admin(t, "backend", "add", name, "--tenants", strings.Join(tenants, ","))
	return &client.Dialer{Relay: r.ConnectAddr, Backend: name, APIKey: key, Timeout: 20 * time.Second}
}
