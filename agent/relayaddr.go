package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tetherhq/tether/protocol"
)

// Which addresses of the relays' list the agent dials.
//
// The relay list (protocol.Relays) comes from a relay, and a relay must not
// be able to point the agent — from inside the tenant's network, through
// its HTTP proxy — at whatever host:port it likes. An address of the list
// that is not one the agent was configured with is dialled only when it is
// acceptable:
//
//   - never a link-local (169.254.0.0/16, fe80::/10: cloud metadata
//     services live there), multicast, unspecified or "this network"
//     (0.0.0.0/8) address, nor the limited broadcast address;
//   - a loopback address only when a configured relay is on loopback;
//   - a private address (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7)
//     only when a configured relay is on one;
//   - either of the two last when relay_networks (CIDR ranges and
//     domains) allows it;
//   - any other (public) address.
//
// "A configured relay is on loopback, or a private address" is known from
// the configured addresses that are IP addresses or localhost, and from
// the address at which a configured name was reached directly (the
// session's remote address; through an HTTP proxy the agent does not see
// it). A listed IP address is judged when the list arrives, and left out
// of it when refused; a listed name is judged when dialled: directly, each
// address the dialer connects to (QUIC: the address it resolved, which is
// then dialled); through the HTTP proxy, which resolves the name itself,
// the addresses the agent's own resolver gives, when it gives any (a name
// only the proxy resolves cannot be checked: relay_networks is then the
// way to be strict). A refused address is logged once, with the reason.

// relayNetwork is one relay_networks entry: a CIDR range or a domain.
type relayNetwork struct {
	prefix netip.Prefix // valid for a range
	domain string       // lower case, no leading dot, for a domain
}

// parseRelayNetworks parses the relay_networks setting: CIDR ranges
// (10.1.0.0/16, fd00::/8), single IP addresses, or DNS domains (which also
// match their subdomains; a leading "." is allowed).
func parseRelayNetworks(entries []string) ([]relayNetwork, error) {
	var out []relayNetwork
	var errs []error
	for i, e := range entries {
		e = strings.TrimSpace(e)
		if p, err := netip.ParsePrefix(e); err == nil {
			if c, why := classify(p.Addr()); c == addrNever {
				errs = append(errs, fmt.Errorf("relay_networks[%d] %q: %s addresses are never a relay's", i, e, why))
				continue
			}
			out = append(out, relayNetwork{prefix: p.Masked()})
			continue
		}
		if ip, err := netip.ParseAddr(e); err == nil {
			if c, why := classify(ip); c == addrNever {
				errs = append(errs, fmt.Errorf("relay_networks[%d] %q: %s addresses are never a relay's", i, e, why))
				continue
			}
			out = append(out, relayNetwork{prefix: netip.PrefixFrom(ip.Unmap(), ip.Unmap().BitLen())})
			continue
		}
		d := strings.ToLower(strings.TrimPrefix(e, "."))
		if protocol.ValidateRelayAddr(net.JoinHostPort(d, "1")) != nil || strings.Trim(d, "0123456789.") == "" {
			errs = append(errs, fmt.Errorf("relay_networks[%d] %q: want a CIDR range, an IP address or a DNS domain", i, e))
			continue
		}
		out = append(out, relayNetwork{domain: d})
	}
	return out, errors.Join(errs...)
}

// addrClass is what kind of address a relay's is.
type addrClass int

const (
	addrPublic addrClass = iota
	addrPrivate
	addrLoopback
	addrNever // never dialled when only a relay named it
)

// sharedSpace is RFC 6598's shared address space (carrier-grade NAT, and
// the addresses of some overlay networks): private, for this purpose.
var sharedSpace = netip.MustParsePrefix("100.64.0.0/10")

// classify says what kind of address ip is, and, for addrNever, its name.
func classify(ip netip.Addr) (addrClass, string) {
	ip = ip.Unmap()
	switch {
	case ip.IsLoopback():
		return addrLoopback, "loopback"
	case ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast():
		return addrNever, "link-local"
	case ip.IsMulticast():
		return addrNever, "multicast"
	case ip.IsUnspecified():
		return addrNever, "unspecified"
	case ip.Is4() && (ip.As4()[0] == 0 || ip == netip.AddrFrom4([4]byte{255, 255, 255, 255})):
		return addrNever, "reserved (0.0.0.0/8 or broadcast)"
	case ip.IsPrivate() || sharedSpace.Contains(ip):
		return addrPrivate, "private"
	}
	return addrPublic, "public"
}

// RelayRefusedError is a listed relay address the agent refused to dial.
type RelayRefusedError struct {
	Addr   string // as the list gave it
	Reason string
}

func (e *RelayRefusedError) Error() string {
	return fmt.Sprintf("relay address %s from the relays' list refused: %s", e.Addr, e.Reason)
}

func isRelayRefused(err error) bool {
	_, ok := errors.AsType[*RelayRefusedError](err)
	return ok
}

// relayGuard applies the rules above for an agent.
type relayGuard struct {
	configured map[string]bool // the configured relay addresses
	networks   []relayNetwork
	log        *slog.Logger
	// lookup resolves a name (net.DefaultResolver's LookupNetIP outside
	// tests).
	lookup func(ctx context.Context, host string) ([]netip.Addr, error)

	loopback atomic.Bool // a configured relay is on loopback
	private  atomic.Bool // a configured relay is on a private address

	refusals atomic.Uint64 // addresses refused, counted each time
	mu       sync.Mutex    // guards logged
	logged   map[string]bool
}

// maxRefusalsLogged bounds the refusals remembered as logged; beyond, they
// are logged at debug level.
const maxRefusalsLogged = 1024

// lookupTimeout bounds the resolution of a listed name through the proxy
// (a check only; the proxy resolves it for the connection).
const lookupTimeout = 3 * time.Second

func newRelayGuard(relays []string, networks []relayNetwork, log *slog.Logger) *relayGuard {
	g := &relayGuard{configured: map[string]bool{}, networks: networks, log: log, logged: map[string]bool{},
		lookup: func(ctx context.Context, host string) ([]netip.Addr, error) {
			return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		}}
	for _, r := range relays {
		g.configured[r] = true
		host, _, _ := net.SplitHostPort(r)
		if ip, err := netip.ParseAddr(host); err == nil {
			g.grant(ip)
		} else if isLocalhost(host) {
			g.loopback.Store(true)
		}
	}
	return g
}

// isLocalhost reports whether host is localhost or a name under it.
func isLocalhost(host string) bool {
	h := strings.ToLower(strings.TrimSuffix(host, "."))
	return h == "localhost" || strings.HasSuffix(h, ".localhost")
}

// grant records that a configured relay is at ip.
func (g *relayGuard) grant(ip netip.Addr) {
	switch c, _ := classify(ip); c {
	case addrLoopback:
		g.loopback.Store(true)
	case addrPrivate:
		g.private.Store(true)
	}
}

// reachedAt records the address at which a session to relay, dialled
// directly, was established: for a configured relay, its class is
// granted to listed ones.
func (g *relayGuard) reachedAt(relay string, remote net.Addr) {
	if !g.configured[relay] || remote == nil {
		return
	}
	if ap, err := netip.ParseAddrPort(remote.String()); err == nil {
		g.grant(ap.Addr())
	}
}

// listed reports whether relay is not a configured address: one that a
// relay's list named.
func (g *relayGuard) listed(relay string) bool { return !g.configured[relay] }

// inDomains reports whether host is a relay_networks domain or under one.
func (g *relayGuard) inDomains(host string) bool {
	h := strings.ToLower(strings.TrimSuffix(host, "."))
	for _, n := range g.networks {
		if n.domain != "" && (h == n.domain || strings.HasSuffix(h, "."+n.domain)) {
			return true
		}
	}
	return false
}

// checkIP says why ip must not be dialled for a listed relay named host
// (ip itself, or a name that resolved to it), or "" when it may be.
func (g *relayGuard) checkIP(host string, ip netip.Addr) string {
	c, name := classify(ip)
	if c == addrNever {
		return fmt.Sprintf("%s is a %s address, never a relay's", ip, name)
	}
	if c == addrPublic {
		return ""
	}
	ip = ip.Unmap()
	for _, n := range g.networks {
		if n.prefix.IsValid() && n.prefix.Contains(ip) {
			return ""
		}
	}
	if host != "" && g.inDomains(host) {
		return ""
	}
	if c == addrLoopback {
		if g.loopback.Load() {
			return ""
		}
		return fmt.Sprintf("%s is a loopback address and no configured relay is on loopback (relay_networks can allow it)", ip)
	}
	if g.private.Load() {
		return ""
	}
	return fmt.Sprintf("%s is a private address and no configured relay is on one (relay_networks can allow it)", ip)
}

// refused logs a refusal, once per address and reason, and returns it.
func (g *relayGuard) refused(addr, reason string) *RelayRefusedError {
	g.refusals.Add(1)
	key := addr + "\x00" + reason
	g.mu.Lock()
	first := !g.logged[key] && len(g.logged) < maxRefusalsLogged
	if first {
		g.logged[key] = true
	}
	g.mu.Unlock()
	level := slog.LevelDebug
	if first {
		level = slog.LevelWarn
	}
	g.log.Log(context.Background(), level, "not dialling a relay address from the relays' list", "addr", addr, "reason", reason)
	return &RelayRefusedError{Addr: addr, Reason: reason}
}

// filter returns list without the entries whose address is refused on its
// face: an IP address that checkIP refuses, or localhost when no
// configured relay is on loopback. Configured addresses always stay.
func (g *relayGuard) filter(list []protocol.RelayInfo) []protocol.RelayInfo {
	out := list[:0:0]
	for _, r := range list {
		if g.configured[r.Addr] {
			out = append(out, r)
			continue
		}
		host, _, err := net.SplitHostPort(r.Addr)
		if err != nil {
			continue // Validate checked it
		}
		why := ""
		if ip, err := netip.ParseAddr(host); err == nil {
			why = g.checkIP("", ip)
		} else if isLocalhost(host) {
			why = g.checkIP(host, netip.IPv6Loopback())
		}
		if why != "" {
			g.refused(r.Addr, why)
			continue
		}
		out = append(out, r)
	}
	return out
}

// quicAddr resolves a listed relay's address for a QUIC dial and checks
// it: the address returned (an IP address and the port) is the one to
// dial, so that a name cannot resolve to another one in between.
func (g *relayGuard) quicAddr(ctx context.Context, relay string) (string, error) {
	host, port, err := net.SplitHostPort(relay)
	if err != nil {
		return "", err
	}
	var ips []netip.Addr
	if ip, err := netip.ParseAddr(host); err == nil {
		ips = []netip.Addr{ip}
	} else if ips, err = g.lookup(ctx, host); err != nil {
		return "", err
	}
	for _, ip := range ips {
		if why := g.checkIP(host, ip); why != "" {
			return "", g.refused(relay, why)
		}
	}
	if len(ips) == 0 {
		return "", fmt.Errorf("relay %s: no address", relay)
	}
	// As net.ResolveUDPAddr: an IPv4 address first.
	slices.SortStableFunc(ips, func(a, b netip.Addr) int {
		switch {
		case a.Unmap().Is4() && !b.Unmap().Is4():
			return -1
		case !a.Unmap().Is4() && b.Unmap().Is4():
			return 1
		}
		return 0
	})
	return net.JoinHostPort(ips[0].Unmap().String(), port), nil
}

// control returns a net.Dialer Control function for a direct TCP dial of
// listed relay: it checks each address the dialer connects to.
func (g *relayGuard) control(relay string) func(network, address string, c syscall.RawConn) error {
	host, _, _ := net.SplitHostPort(relay)
	return func(_, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return fmt.Errorf("relay %s: dialling %q: %w", relay, address, err)
		}
		if why := g.checkIP(host, ap.Addr()); why != "" {
			return g.refused(relay, why)
		}
		return nil
	}
}

// checkProxied checks a listed relay reached through the HTTP proxy, which
// resolves its name: an IP address is checked; a name, by the addresses
// the agent's own resolver gives, when it gives any.
func (g *relayGuard) checkProxied(ctx context.Context, relay string) error {
	host, _, err := net.SplitHostPort(relay)
	if err != nil {
		return err
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if why := g.checkIP("", ip); why != "" {
			return g.refused(relay, why)
		}
		return nil
	}
	if g.inDomains(host) {
		return nil
	}
	if isLocalhost(host) {
		if why := g.checkIP(host, netip.IPv6Loopback()); why != "" {
			return g.refused(relay, why)
		}
		return nil
	}
	lctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	ips, err := g.lookup(lctx, host)
	if err != nil {
		return nil // only the proxy resolves it
	}
	for _, ip := range ips {
		if why := g.checkIP(host, ip); why != "" {
			return g.refused(relay, why)
		}
	}
	return nil
}
