package client_test

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/client"
)

// BenchmarkForwardFirstByte measures, side by side in one run, the time
// from a new local connection to the first byte back through a forward
// without spare connections to the relay ("cold": TCP connect and, on the
// TLS door, the TLS handshake, then the CONNECT request) and through one
// with the default spares ("spare": only the CONNECT request). Each
// iteration makes one connection through each, alternately, sends a byte
// to the echo service behind the agent and reads it back. It reports both
// times and their ratio. Sub-benchmarks: the door, and the round-trip
// time added between the forward and the relay (0: loopback; 10ms: a
// backend in another data centre than the relay). The added latency is a
// proxy delaying every chunk by half the RTT each way; a TCP handshake
// with it would still cost nothing (the kernel completes it on loopback),
// so the Dialer waits one RTT before each connect to stand for it.
func BenchmarkForwardFirstByte(b *testing.B) {
	w := newWorld(b, worldOpts{})
	for _, door := range []string{"connect", "connect-tls"} {
		for _, rtt := range []time.Duration{0, 10 * time.Millisecond} {
			b.Run(door+"/rtt-"+rtt.String(), func(b *testing.B) {
				d := *w.plain
				relayAddr := w.relay.ConnectAddr().String()
				if door == "connect-tls" {
					d = *w.tls
					relayAddr = w.relay.ConnectTLSAddr().String()
				}
				d.Relay = newTCPProxy(b, relayAddr, rtt/2).addr()
				d.NetDialer = &net.Dialer{ControlContext: func(context.Context, string, string, syscall.RawConn) error {
					time.Sleep(rtt) // the SYN, SYN-ACK round trip
					return nil
				}}
				cold, _ := serveForward(b, &client.Forward{Dialer: &d, Target: w.target, Spares: -1})
				spare, _ := serveForward(b, &client.Forward{Dialer: &d, Target: w.target})
				firstByte(b, cold) // warm both paths up (relay caches, agent stream)
				firstByte(b, spare)
				var coldTotal, spareTotal time.Duration
				n := 0
				for b.Loop() {
					coldTotal += firstByte(b, cold)
					spareTotal += firstByte(b, spare)
					n++
				}
				coldAvg, spareAvg := coldTotal/time.Duration(n), spareTotal/time.Duration(n)
				b.ReportMetric(float64(coldAvg.Microseconds())/1000, "cold-ms")
				b.ReportMetric(float64(spareAvg.Microseconds())/1000, "spare-ms")
				b.ReportMetric(float64(coldAvg)/float64(spareAvg), "cold/spare")
			})
		}
	}
}

// firstByte connects to addr, sends one byte and returns how long it took
// to read it back.
func firstByte(b *testing.B, addr string) time.Duration {
	start := time.Now()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Write([]byte{'x'}); err != nil {
		b.Fatal(err)
	}
	var one [1]byte
	if _, err := io.ReadFull(c, one[:]); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

// BenchmarkDialTLSResumption measures, side by side in one run, a new
// connection through the TLS door with a full TLS handshake and with a
// resumed one (as the Dialer resumes by default): the time from the dial
// to the first byte back, and the CPU the whole process (backend, relay
// and agent, all in this process) spent per connection. Each iteration
// dials once each way, alternately.
func BenchmarkDialTLSResumption(b *testing.B) {
	w := newWorld(b, worldOpts{})
	resume := *w.tls
	full := *w.tls
	full.TLSConfig = w.tls.TLSConfig.Clone()
	full.TLSConfig.ClientSessionCache = noSessions{}
	dialOnce := func(d *client.Dialer) (wall, cpu time.Duration) {
		c0 := processCPU()
		start := time.Now()
		c, err := d.Dial("tcp", w.target)
		if err != nil {
			b.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := c.Write([]byte{'x'}); err != nil {
			b.Fatal(err)
		}
		var one [1]byte
		if _, err := io.ReadFull(c, one[:]); err != nil {
			b.Fatal(err)
		}
		wall = time.Since(start)
		c.Close()
		return wall, processCPU() - c0
	}
	dialOnce(&resume) // the first connection of each is a full one
	dialOnce(&full)
	var fullWall, fullCPU, resWall, resCPU time.Duration
	n := 0
	for b.Loop() {
		w1, c1 := dialOnce(&full)
		w2, c2 := dialOnce(&resume)
		fullWall, fullCPU, resWall, resCPU = fullWall+w1, fullCPU+c1, resWall+w2, resCPU+c2
		n++
	}
	per := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(n) }
	b.ReportMetric(per(fullWall), "full-µs")
	b.ReportMetric(per(resWall), "resumed-µs")
	b.ReportMetric(per(fullCPU), "full-cpu-µs")
	b.ReportMetric(per(resCPU), "resumed-cpu-µs")
	b.ReportMetric(float64(resCPU)/float64(fullCPU), "resumed/full-cpu")
}

// processCPU is the user and system CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// noSessions is a ClientSessionCache that keeps nothing: every handshake
// is a full one.
type noSessions struct{}

func (noSessions) Get(string) (*tls.ClientSessionState, bool) { return nil, false }
func (noSessions) Put(string, *tls.ClientSessionState)        {}
