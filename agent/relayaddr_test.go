package agent

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
)

// countingHandler counts the log records at info level and above, by
// message, and keeps their text.
type countingHandler struct {
	mu    sync.Mutex
	warns map[string]int
	lines []string
}

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *countingHandler) WithGroup(string) slog.Handler            { return h }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Level < slog.LevelInfo {
		return nil
	}
	var b strings.Builder
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool {
		b.WriteString(" " + a.String())
		return true
	})
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.warns == nil {
		h.warns = map[string]int{}
	}
	h.warns[r.Message]++
	h.lines = append(h.lines, b.String())
	return nil
}

func (h *countingHandler) count(msg string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.warns[msg]
}

// fakeLookup resolves the names of hosts, and no other.
func fakeLookup(hosts map[string]string) func(context.Context, string) ([]netip.Addr, error) {
	return func(_ context.Context, host string) ([]netip.Addr, error) {
		if a, ok := hosts[host]; ok {
			return []netip.Addr{netip.MustParseAddr(a)}, nil
		}
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
}

func listed(addrs ...string) []protocol.RelayInfo {
	var out []protocol.RelayInfo
	for i, a := range addrs {
		out = append(out, protocol.RelayInfo{ID: "r" + string(rune('a'+i)), Addr: a})
	}
	return out
}

func addrsOf(list []protocol.RelayInfo) []string {
	var out []string
	for _, r := range list {
		out = append(out, r.Addr)
	}
	return out
}

// TestRelayGuardFilter: the addresses of a relay list kept by the agent,
// by what its configured relays are.
func TestRelayGuardFilter(t *testing.T) {
	all := []string{
		"127.0.0.1:7443", "[::1]:7443", "localhost:7443",
		"169.254.169.254:80", "[fe80::1]:7443", "0.1.2.3:7443", "255.255.255.255:7443",
		"10.0.0.5:7443", "172.16.0.1:7443", "192.168.1.1:7443", "100.64.1.1:7443", "[fd00::1]:7443",
		"[::ffff:10.0.0.5]:7443", "[::ffff:169.254.169.254]:80",
		"203.0.113.7:7443", "relay-2.example.com:7443",
	}
	public := []string{"203.0.113.7:7443", "relay-2.example.com:7443"}
	loopback := []string{"127.0.0.1:7443", "[::1]:7443", "localhost:7443"}
	private := []string{"10.0.0.5:7443", "172.16.0.1:7443", "192.168.1.1:7443", "100.64.1.1:7443", "[fd00::1]:7443", "[::ffff:10.0.0.5]:7443"}
	for _, tc := range []struct {
		name       string
		configured []string
		networks   []string
		reached    string // a configured relay reached directly at this address
		want       []string
	}{
		{name: "public name", configured: []string{"relays.example.com:7443"}, want: public},
		{name: "loopback", configured: []string{"127.0.0.1:7443"}, want: slices.Concat(loopback, public)},
		{name: "localhost", configured: []string{"localhost:7443"}, want: slices.Concat(loopback, public)},
		{name: "private", configured: []string{"10.0.1.1:7443"}, want: slices.Concat(private, public)},
		{name: "name reached at a private address", configured: []string{"relays.corp:7443"}, reached: "10.0.1.1:7443", want: slices.Concat(private, public)},
		{name: "relay_networks", configured: []string{"relays.example.com:7443"}, networks: []string{"10.0.0.0/24", "::1"}, want: []string{"[::1]:7443", "localhost:7443", "10.0.0.5:7443", "[::ffff:10.0.0.5]:7443", "203.0.113.7:7443", "relay-2.example.com:7443"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nets, err := parseRelayNetworks(tc.networks)
			if err != nil {
				t.Fatal(err)
			}
			h := &countingHandler{}
			g := newRelayGuard(tc.configured, nets, slog.New(h))
			if tc.reached != "" {
				g.reachedAt(tc.configured[0], net.TCPAddrFromAddrPort(netip.MustParseAddrPort(tc.reached)))
			}
			got := addrsOf(g.filter(listed(all...)))
			if !slices.Equal(got, tc.want) {
				t.Fatalf("kept %v, want %v", got, tc.want)
			}
			refused := len(all) - len(tc.want)
			if n := h.count("not dialling a relay address from the relays' list"); n != refused {
				t.Fatalf("%d refusals logged, want %d", n, refused)
			}
			g.filter(listed(all...)) // the same list again: nothing logged again
			if n := h.count("not dialling a relay address from the relays' list"); n != refused {
				t.Fatalf("%d refusals logged after the list came again, want %d (once each)", n, refused)
			}
		})
	}
	// A configured address stays, whatever it is.
	g := newRelayGuard([]string{"relays.example.com:7443", "169.254.1.1:7443"}, nil, slog.New(slog.DiscardHandler))
	if got := addrsOf(g.filter(listed("169.254.1.1:7443", "10.0.0.1:7443"))); !slices.Equal(got, []string{"169.254.1.1:7443"}) {
		t.Fatalf("kept %v, want the configured address only", got)
	}
}

// TestRelayGuardNames: a listed name is judged by the addresses it
// resolves to when it is dialled: QUIC dials the address checked; a TCP
// dial checks each address it connects to; through the HTTP proxy, the
// agent's own resolution, when there is one.
func TestRelayGuardNames(t *testing.T) {
	nets, err := parseRelayNetworks([]string{"corp.example"})
	if err != nil {
		t.Fatal(err)
	}
	g := newRelayGuard([]string{"relays.example.com:7443"}, nets, slog.New(slog.DiscardHandler))
	g.lookup = fakeLookup(map[string]string{
		"metadata.test": "169.254.169.254", "intranet.test": "10.1.2.3", "loop.test": "127.0.0.1",
		"relay-2.example.com": "203.0.113.8", "relay.corp.example": "10.1.2.4", "v6.test": "2001:db8::1",
	})
	ctx := context.Background()
	for host, want := range map[string]string{"metadata.test": "", "intranet.test": "", "loop.test": "",
		"relay-2.example.com": "203.0.113.8:7443", "relay.corp.example": "10.1.2.4:7443", "v6.test": "[2001:db8::1]:7443"} {
		got, err := g.quicAddr(ctx, host+":7443")
		if want == "" {
			if !isRelayRefused(err) {
				t.Errorf("quic %s: %q, %v; want refused", host, got, err)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("quic %s: %q, %v; want %s", host, got, err, want)
		}
	}
	for addr, ok := range map[string]bool{"127.0.0.1:7443": false, "169.254.169.254:80": false, "10.0.0.1:7443": false, "203.0.113.9:7443": true} {
		err := g.control("relay-3.example.com:7443")("tcp4", addr, nil)
		if ok != (err == nil) || (err != nil && !isRelayRefused(err)) {
			t.Errorf("tcp to relay-3.example.com connecting to %s: %v", addr, err)
		}
	}
	if err := g.control("relay.corp.example:7443")("tcp4", "10.0.0.1:7443", nil); err != nil {
		t.Errorf("tcp to a name of relay_networks at a private address: %v", err)
	}
	for relay, ok := range map[string]bool{
		"10.0.0.5:7443": false, "169.254.169.254:80": false, "localhost:7443": false,
		"intranet.test:7443": false, "metadata.test:80": false, // the agent's resolver says where they lead
		"relay-2.example.com:7443": true, "only-the-proxy-knows.example:7443": true, "relay.corp.example:7443": true,
	} {
		err := g.checkProxied(ctx, relay)
		if ok != (err == nil) || (err != nil && !isRelayRefused(err)) {
			t.Errorf("through the proxy to %s: %v", relay, err)
		}
	}
}

// TestRelayNetworksSetting: relay_networks in the config file.
func TestRelayNetworksSetting(t *testing.T) {
	c, err := ParseConfig([]byte("state_dir: /x\nrelay_networks: [10.20.0.0/16, 'fd12::/16', 192.168.7.9, .corp.example, relays.example.com]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := parseRelayNetworks(c.RelayNetworks); err != nil {
		t.Fatal(err)
	}
	_, err = ParseConfig([]byte("state_dir: /x\nrelay_networks: [169.254.0.0/16, 'not a network', 239.1.2.3]\n"))
	for _, want := range []string{`relay_networks[0] "169.254.0.0/16": link-local`, `relay_networks[1] "not a network": want a CIDR range`, `relay_networks[2] "239.1.2.3": multicast`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v, want it to say %s", err, want)
		}
	}
}

// TestRelayListCannotPointInside is the audit's case: the relay the agent
// reaches (configured by name, through the tenant's HTTP proxy) lists an
// internal address on loopback, the cloud metadata address, and a name
// that leads to loopback; the agent dials none of them — not directly,
// not through the proxy — and keeps its two connections on the relay it
// was configured with.
func TestRelayListCannotPointInside(t *testing.T) {
	var mu sync.Mutex
	var reached []string
	internal := listen(t, func(c net.Conn) {
		mu.Lock()
		reached = append(reached, c.RemoteAddr().String())
		mu.Unlock()
	})
	_, port, _ := net.SplitHostPort(internal)
	ca := newTestCA(t)
	r := newTestRelay(t, ca, "r1", "127.0.0.1", true)
	proxy := startConnectProxy(t, "ok", "agent", "s3cret", nil)
	proxy.route = map[string]string{"relay.example:443": r.addr}
	r.setList([]protocol.RelayInfo{
		{ID: "r1", Addr: "relay.example:443"},
		{ID: "intranet-db", Addr: internal},
		{ID: "metadata", Addr: "169.254.169.254:80"},
		{ID: "intranet-name", Addr: "intranet.test:" + port},
	})
	h := &countingHandler{}
	cfg := Config{
		Relays: []string{"relay.example:443"}, Transport: TransportTCP, RelayConnections: 2,
		Proxy: "http://agent:s3cret@" + proxy.addr, NoProxy: "nothing.invalid",
		Services: map[string]Service{}, Logger: slog.New(h),
		Reconnect: Backoff{Initial: 100 * time.Millisecond, Max: time.Second}, NoFileWatch: true,
	}
	a := enrolledWith(t, cfg, ca.root, ca.root)
	a.guard.lookup = fakeLookup(map[string]string{"intranet.test": "127.0.0.1"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	}()

	waitFor(t, 15*time.Second, "both connections on r1 and the name refused", func() error {
		if h := held(a); len(h) != 2 || h[0] != "r1" || h[1] != "r1" {
			return errors.New("connections: " + strings.Join(slices.Collect(maps.Values(h)), ","))
		}
		if a.guard.refusals.Load() < 3 {
			return errNotYet
		}
		return nil
	})
	if got := addrsOf(a.Status().Cluster); !slices.Equal(got, []string{"relay.example:443", "intranet.test:" + port}) && !slices.Equal(got, []string{"intranet.test:" + port, "relay.example:443"}) {
		t.Errorf("the agent's cluster list is %v, want the relay and the name only (the addresses refused left out)", got)
	}
	connects, _ := proxy.seen()
	for _, c := range connects {
		if c != "relay.example:443" {
			t.Errorf("the proxy was asked for %s", c)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(reached) > 0 {
		t.Errorf("the agent connected to %s, which only the relay's list named, from %v", internal, reached)
	}
	for _, want := range []string{"addr=" + internal + " reason=127.0.0.1 is a loopback address", "addr=169.254.169.254:80 reason=169.254.169.254 is a link-local address", "addr=intranet.test:" + port + " reason=127.0.0.1 is a loopback address"} {
		found := false
		for _, l := range h.lines {
			found = found || strings.Contains(l, want)
		}
		if !found {
			t.Errorf("no warning says %q; warnings: %q", want, h.lines)
		}
	}
}
