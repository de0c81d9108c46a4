package test

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol/transport"
)

// The floor of the tunnel's shape. Tether puts two processes between a
// backend and a service (relay and agent), so every byte crosses loopback
// three times instead of once and every round trip wakes two more
// processes. The benchmarks measure that shape on its own as the path
// "fwd": two plain forwarder processes in a chain, each relaying every
// connection to a new connection to the next with Tether's own copy loop
// (transport.Splice) and raw system calls (transport.Direct), but with no
// TLS, no multiplexing, no authentication and no audit. What Tether costs
// beyond "fwd" is what its security and multiplexing cost; what "fwd"
// costs over direct is the shape's own cost with forwarders built the way
// Tether's relay and agent are (Go, the same copy loop and socket I/O).

// forwardEnv, set to a comma-separated list of host:port targets, makes the
// test binary a forwarder process instead of running tests (see TestMain).
const forwardEnv = "TETHER_BENCH_FORWARD"

// runForwarder is the whole life of a forwarder process: for each target it
// listens on a loopback port, prints "forward LISTEN -> TARGET", and splices
// every connection it accepts with a new connection to the target, until
// the process is killed.
func runForwarder(targets string) int {
	for _, target := range strings.Split(targets, ",") {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			fmt.Fprintln(os.Stderr, "forwarder:", err)
			return 1
		}
		fmt.Printf("forward %s -> %s\n", ln.Addr(), target)
		go forwardAll(transport.DirectListener(ln), target)
	}
	select {}
}

func forwardAll(ln net.Listener, target string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, "forwarder: accept:", err)
			os.Exit(1)
		}
		go func() {
			back, err := net.Dial("tcp", target)
			if err != nil {
				fmt.Fprintln(os.Stderr, "forwarder: dial:", err)
				c.Close()
				return
			}
			// Accepted connections are transport.Direct's; Splice wraps
			// the dialled *net.TCPConn the same way.
			transport.Splice(c.(transport.Stream), back.(*net.TCPConn), 0)
		}()
	}
}

var forwardLine = regexp.MustCompile(`forward (\S+) -> (\S+)`)

// startForwarders starts the two-forwarder chain in front of targets
// (name → address): the "agent" forwarder connects to the targets, the
// "relay" forwarder to the agent forwarder. It returns the address to dial
// for each name and the two processes.
func startForwarders(b testing.TB, targets map[string]string) (addrs map[string]string, relay, agent *proc) {
	b.Helper()
	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	names := make([]string, 0, len(targets))
	for name := range targets {
		names = append(names, name)
	}
	chain := func(procName string, to map[string]string) (*proc, map[string]string) {
		list := make([]string, len(names))
		for i, name := range names {
			list[i] = to[name]
		}
		p := startEnv(b, procName, []string{forwardEnv + "=" + strings.Join(list, ",")}, self)
		// The forwarder prints one line per target, in order.
		p.waitOutput("-> "+list[len(list)-1]+"\n", 10*time.Second)
		m := forwardLine.FindAllStringSubmatch(p.out.String(), -1)
		if len(m) != len(names) {
			b.Fatalf("%s printed %d listeners, want %d:\n%s", procName, len(m), len(names), p.out.String())
		}
		listen := map[string]string{}
		for i, name := range names {
			if m[i][2] != list[i] {
				b.Fatalf("%s forwards %s to %s, want %s", procName, m[i][1], m[i][2], list[i])
			}
			listen[name] = m[i][1]
		}
		return p, listen
	}
	agent, mid := chain("forwarder (agent side)", targets)
	relay, addrs = chain("forwarder (relay side)", mid)
	return addrs, relay, agent
}

// TestForwarderChain checks the benchmarks' floor path itself: bytes go
// through both forwarders to the right service and back, and a half-close
// reaches the service (the counting sink answers only after EOF).
func TestForwarderChain(t *testing.T) {
	services := map[string]string{"echo": tcpService(t, echo), "sink": tcpService(t, countingSink)}
	addrs, _, _ := startForwarders(t, services)

	c, err := net.Dial("tcp", addrs["echo"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	msg := []byte("through two forwarders")
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != string(msg) {
		t.Fatalf("echo through the chain = %q, %v; want %q", got, err, msg)
	}

	s, err := net.Dial("tcp", addrs["sink"])
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.SetDeadline(time.Now().Add(10 * time.Second))
	const n = 3 << 20
	if _, err := s.Write(make([]byte, n)); err != nil {
		t.Fatal(err)
	}
	if err := closeWrite(s); err != nil {
		t.Fatal(err)
	}
	var count [8]byte
	if _, err := io.ReadFull(s, count[:]); err != nil {
		t.Fatalf("sink's count through the chain: %v", err)
	}
	if got := binary.BigEndian.Uint64(count[:]); got != n {
		t.Fatalf("the sink counted %d bytes through the chain, want %d", got, n)
	}
}
