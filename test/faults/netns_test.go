//go:build linux

package faults

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// The topology of one test:
//
//	root namespace        │ router namespace                  │ agent namespace
//	relay ── uplink ──────┼── uplink ═╗                       │
//	                      │           tunIn → Go → tunOut     │
//	                      │     wan ══╝  (and back)  ─────────┼── wan ── tether-agent
//	services ── lan ──────┼───────────────────────────────────┼── lan ──┘
//
// Every packet between the agent and the relay passes the router
// namespace, where policy routing sends whatever arrives on "uplink" or
// "wan" into the TUN device tunIn; the impairing router (router_test.go)
// reads it there and writes it, when due, into tunOut, from which the
// kernel forwards it by the main table. The agent reaches its services
// (PostgreSQL, HTTP) over a link of its own ("lan"), which nothing
// impairs, as a tenant's agent reaches its database over the tenant's
// LAN. The relay stays in the root namespace (so the backend reaches its
// front doors on loopback), its agent port bound to the root end of
// "uplink"; all its ports are free ports, never default ones, so a relay
// with default settings may run beside.
type topology struct {
	id     string // unique per topology: names of namespaces and links
	router string // namespace names
	agent  string

	// Addresses: a /22 of 10/8 not used on this machine, one /24 per link.
	relayIP  netip.Addr // root end of "uplink": the relay's agent port
	upRouter netip.Addr // router end of "uplink"
	wanGW    netip.Addr // router end of "wan"
	agentIP  netip.Addr // agent end of "wan" (changed by moveAgent)
	wanNet   netip.Prefix
	lanIP    netip.Addr // root end of "lan": the services
	lanAgent netip.Addr // agent end of "lan"
	lanNet   netip.Prefix

	rootUp, rootLAN string // names of the root ends (the others are named within their namespace)
}

// routingTable is the router namespace's table whose default route is
// tunIn.
const routingTable = "100"

// netnsUnavailable says why this machine cannot run the suite, or is "".
// It is set once by TestMain.
var netnsUnavailable string

// probeNetns reports why network namespaces cannot be made here, or "";
// it first removes namespaces that earlier runs, killed before their
// cleanups ran, left behind.
func probeNetns() string {
	if os.Geteuid() != 0 {
		return "the fault suite needs root to create network namespaces (ip netns add)"
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return fmt.Sprintf("the fault suite needs ip (iproute2) to create network namespaces: %v", err)
	}
	sweepNamespaces()
	name := nsPrefix + "probe-" + randomID()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return fmt.Sprintf("cannot create a network namespace: ip netns add: %v: %s", err, strings.TrimSpace(string(out)))
	}
	exec.Command("ip", "netns", "del", name).Run()
	return ""
}

// nsPrefix begins the name of every namespace of the suite; the test
// process's id follows (see sweepNamespaces).
const nsPrefix = "tether-fault-"

// sweepNamespaces deletes the namespaces of test processes that no longer
// run, and with them their links, routes and iptables rules. (The root
// ends of the links go with their peers; TUN devices and processes go
// with the test process.)
func sweepNamespaces() {
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), nsPrefix)
		if !ok {
			continue
		}
		pid, _, _ := strings.Cut(rest, "-")
		n, err := strconv.Atoi(pid)
		if err != nil || n <= 0 || processAlive(n) {
			continue
		}
		exec.Command("ip", "netns", "del", e.Name()).Run()
	}
}

func processAlive(pid int) bool {
	err := unix.Kill(pid, 0)
	return err == nil || errors.Is(err, unix.EPERM)
}

// checkTools fails the test when a tool the suite needs besides ip is
// missing: scripts/deps.sh installs it.
func checkTools(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("iptables"); err != nil {
		t.Fatalf("the fault suite needs iptables: %v: run scripts/deps.sh", err)
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Fatalf("the fault suite needs TUN devices: %v", err)
	}
}

// randomID names one topology's namespaces and links (8 hex digits: a
// link name holds at most 15 bytes).
func randomID() string { return fmt.Sprintf("%08x", rand.Uint32()) }

// needNetns skips the test where namespaces cannot be made.
func needNetns(t *testing.T) {
	t.Helper()
	if netnsUnavailable != "" {
		t.Skip(netnsUnavailable)
	}
}

// newTopology creates the namespaces and links of one test; a cleanup
// deletes them, and with them every link, route, rule and iptables rule
// inside, whether the test passed or not.
func newTopology(t *testing.T) *topology {
	t.Helper()
	needNetns(t)
	checkTools(t)
	tp := &topology{id: randomID()}
	tp.router = fmt.Sprintf("%s%d-%s-router", nsPrefix, os.Getpid(), tp.id)
	tp.agent = fmt.Sprintf("%s%d-%s-agent", nsPrefix, os.Getpid(), tp.id)
	tp.rootUp, tp.rootLAN = "tf"+tp.id+"u", "tf"+tp.id+"l"
	base := freeBlock(t)
	at := func(net, host int) netip.Addr {
		b := base.As4()
		b[2] += byte(net)
		b[3] = byte(host)
		return netip.AddrFrom4(b)
	}
	tp.relayIP, tp.upRouter = at(0, 1), at(0, 2)
	tp.wanGW, tp.agentIP = at(1, 1), at(1, 2)
	tp.wanNet = netip.PrefixFrom(at(1, 0), 24)
	tp.lanIP, tp.lanAgent = at(2, 1), at(2, 2)
	tp.lanNet = netip.PrefixFrom(at(2, 0), 24)

	t.Cleanup(tp.remove)
	for _, ns := range []string{tp.router, tp.agent} {
		mustIP(t, "netns", "add", ns)
		mustIP(t, "-n", ns, "link", "set", "lo", "up")
	}
	// Forwarding in the router, with no reverse-path check: packets
	// from the agent come back into the kernel on tunOut.
	must(t, inNetns(tp.router, func() error {
		return writeSysctls(map[string]string{
			"net/ipv4/ip_forward":                "1",
			"net/ipv4/conf/all/rp_filter":        "0",
			"net/ipv4/conf/default/rp_filter":    "0",
			"net/ipv6/conf/all/disable_ipv6":     "1",
			"net/ipv6/conf/default/disable_ipv6": "1",
		})
	}))
	// The agent keeps its other addresses when its first one goes
	// (moveAgent), as a host whose DHCP lease changes does.
	must(t, inNetns(tp.agent, func() error {
		return writeSysctls(map[string]string{
			"net/ipv4/conf/default/promote_secondaries": "1",
			"net/ipv6/conf/all/disable_ipv6":            "1",
			"net/ipv6/conf/default/disable_ipv6":        "1",
		})
	}))

	// uplink: root ↔ router.
	mustIP(t, "link", "add", tp.rootUp, "type", "veth", "peer", "name", "uplink", "netns", tp.router)
	mustIP(t, "addr", "add", tp.relayIP.String()+"/24", "dev", tp.rootUp)
	mustIP(t, "link", "set", tp.rootUp, "up")
	mustIP(t, "-n", tp.router, "addr", "add", tp.upRouter.String()+"/24", "dev", "uplink")
	mustIP(t, "-n", tp.router, "link", "set", "dev", "uplink", "up")
	// wan: router ↔ agent.
	mustIP(t, "-n", tp.router, "link", "add", "wan", "type", "veth", "peer", "name", "wan", "netns", tp.agent)
	mustIP(t, "-n", tp.router, "addr", "add", tp.wanGW.String()+"/24", "dev", "wan")
	mustIP(t, "-n", tp.router, "link", "set", "wan", "up")
	mustIP(t, "-n", tp.agent, "addr", "add", tp.agentIP.String()+"/24", "dev", "wan")
	mustIP(t, "-n", tp.agent, "link", "set", "wan", "up")
	must(t, inNetns(tp.agent, func() error {
		return writeSysctls(map[string]string{"net/ipv4/conf/wan/promote_secondaries": "1"})
	}))
	// lan: root ↔ agent.
	mustIP(t, "link", "add", tp.rootLAN, "type", "veth", "peer", "name", "lan", "netns", tp.agent)
	mustIP(t, "addr", "add", tp.lanIP.String()+"/24", "dev", tp.rootLAN)
	mustIP(t, "link", "set", tp.rootLAN, "up")
	mustIP(t, "-n", tp.agent, "addr", "add", tp.lanAgent.String()+"/24", "dev", "lan")
	mustIP(t, "-n", tp.agent, "link", "set", "lan", "up")
	// Routes: root and agent reach each other's "uplink"/"wan" subnet
	// through the router.
	mustIP(t, "route", "add", tp.wanNet.String(), "via", tp.upRouter.String(), "dev", tp.rootUp)
	mustIP(t, "-n", tp.agent, "route", "add", netip.PrefixFrom(tp.relayIP, 24).Masked().String(), "via", tp.wanGW.String(), "dev", "wan")
	// Everything arriving on "uplink" or "wan" goes into tunIn (the router
	// creates it; a route to a device that does not exist yet cannot be
	// added, so startRouter adds the route).
	mustIP(t, "-n", tp.router, "rule", "add", "iif", "uplink", "lookup", routingTable, "pref", "100")
	mustIP(t, "-n", tp.router, "rule", "add", "iif", "wan", "lookup", routingTable, "pref", "101")
	return tp
}

// remove deletes the namespaces (and so every link with an end in them,
// the root ends included, with their routes) and any root end left.
func (tp *topology) remove() {
	for _, ns := range []string{tp.agent, tp.router} {
		exec.Command("ip", "netns", "del", ns).Run()
	}
	for _, l := range []string{tp.rootUp, tp.rootLAN} {
		exec.Command("ip", "link", "del", l).Run() // usually gone with its peer
	}
}

// freeBlock picks a /22 of 10.64.0.0–10.250.255.255 that no address or
// route of the root namespace overlaps, at random, so that two runs (or
// a run and the machine's own networks) do not collide.
func freeBlock(t *testing.T) netip.Addr {
	t.Helper()
	var used []netip.Prefix
	for _, args := range [][]string{{"-4", "-o", "addr", "show"}, {"-4", "route", "show", "table", "all"}} {
		out, err := exec.Command("ip", args...).Output()
		if err != nil {
			t.Fatalf("ip %s: %v", strings.Join(args, " "), err)
		}
		for _, f := range strings.Fields(string(out)) {
			if p, err := netip.ParsePrefix(f); err == nil {
				used = append(used, p.Masked())
			} else if a, err := netip.ParseAddr(f); err == nil && a.Is4() {
				used = append(used, netip.PrefixFrom(a, 32))
			}
		}
	}
	for range 100 {
		base := netip.AddrFrom4([4]byte{10, byte(64 + rand.IntN(187)), byte(4 * rand.IntN(64)), 0})
		block := netip.PrefixFrom(base, 22)
		free := true
		for _, u := range used {
			if u.Bits() > 0 && u.Overlaps(block) {
				free = false
				break
			}
		}
		if free {
			return base
		}
	}
	t.Fatal("no free /22 in 10.64.0.0/10 for the fault topology")
	return netip.Addr{}
}

// inNetns runs f on an OS thread switched into the network namespace ns,
// and waits for it. Sockets and TUN devices f creates belong to ns and
// stay there when used from other threads. The thread is never switched
// back: it ends with its goroutine, so no other goroutine runs in ns.
func inNetns(ns string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		fd, err := unix.Open(filepath.Join("/run/netns", ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("open namespace %s: %w", ns, err)
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("enter namespace %s: %w", ns, err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

// writeSysctls writes /proc/sys keys of the calling thread's namespace.
func writeSysctls(kv map[string]string) error {
	var errs []error
	for k, v := range kv {
		if err := os.WriteFile(filepath.Join("/proc/sys", k), []byte(v), 0); err != nil {
			errs = append(errs, fmt.Errorf("sysctl %s=%s: %w", k, v, err))
		}
	}
	return errors.Join(errs...)
}

// ip runs the ip command and returns its combined output.
func ip(args ...string) (string, error) {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

func mustIP(t *testing.T, args ...string) {
	t.Helper()
	if _, err := ip(args...); err != nil {
		t.Fatal(err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// wrap is the command prefix that runs a program in namespace ns.
func wrap(ns string) []string { return []string{"ip", "netns", "exec", ns} }

// firewallRule is an iptables rule of the router namespace's FORWARD
// chain, which every packet between agent and relay crosses (twice: into
// tunIn and out of tunOut).
type firewallRule []string

// Rules the scenarios use.
var (
	// dropAll drops every packet entering the router from either side:
	// a blackhole, with no FIN or RST to anyone.
	dropAll = []firewallRule{{"-i", "uplink", "-j", "DROP"}, {"-i", "wan", "-j", "DROP"}}
	// dropUDP drops every UDP packet, as a firewall blocking UDP does.
	dropUDP = []firewallRule{{"-p", "udp", "-j", "DROP"}}
)

// block inserts rules into the router's FORWARD chain and returns a
// function that deletes them; a cleanup deletes them too (and the
// namespace goes with its rules in any case).
func (tp *topology) block(t *testing.T, rules []firewallRule) (lift func()) {
	t.Helper()
	for _, r := range rules {
		if out, err := tp.iptables(append([]string{"-I", "FORWARD"}, r...)...); err != nil {
			t.Fatalf("iptables -I FORWARD %s: %v: %s", strings.Join(r, " "), err, out)
		}
	}
	lifted := false
	lift = func() {
		if lifted {
			return
		}
		lifted = true
		for _, r := range rules {
			if out, err := tp.iptables(append([]string{"-D", "FORWARD"}, r...)...); err != nil {
				t.Errorf("iptables -D FORWARD %s: %v: %s", strings.Join(r, " "), err, out)
			}
		}
	}
	t.Cleanup(lift)
	return lift
}

// iptables runs iptables in the router namespace.
func (tp *topology) iptables(args ...string) ([]byte, error) {
	argv := append(append(wrap(tp.router), "iptables", "-w"), args...)
	return exec.Command(argv[0], argv[1:]...).CombinedOutput()
}

// moveAgent gives the agent a new address on "wan" and removes the old
// one, as a laptop that changes networks or a NAT that rebinds does; it
// returns the new address.
func (tp *topology) moveAgent(t *testing.T) netip.Addr {
	t.Helper()
	old := tp.agentIP
	next := old.Next()
	mustIP(t, "-n", tp.agent, "addr", "add", next.String()+"/24", "dev", "wan")
	mustIP(t, "-n", tp.agent, "addr", "del", old.String()+"/24", "dev", "wan")
	// Deleting an address takes the routes whose source it was; put the
	// route to the relay back if it went.
	if out, err := ip("-n", tp.agent, "route", "show", netip.PrefixFrom(tp.relayIP, 24).Masked().String()); err != nil || strings.TrimSpace(out) == "" {
		mustIP(t, "-n", tp.agent, "route", "replace", netip.PrefixFrom(tp.relayIP, 24).Masked().String(), "via", tp.wanGW.String(), "dev", "wan")
	}
	tp.agentIP = next
	return next
}
