package transport_test

import (
	"context"
	"io"
	"net"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol/transport"
)

// BenchmarkGateFlood is the relay's side of BenchmarkTenantFlood (test/)
// in one process, where the Go scheduler is the only thing shared: tenant
// b's agent session (TLS+yamux on loopback) carries 200 streams that each
// download without end, spliced to loopback TCP connections read as fast
// as they come, while tenant a's session carries one stream on which a
// 1-byte round trip is timed. "nogate" splices as the relay did before
// copy gates, "gate" gives each tenant a gate of 2 x GOMAXPROCS slots as
// the relay's front doors do. It reports a's p50 alone and under the
// flood, their ratio, and the flood's rate. Run it with -benchtime 1x.
func BenchmarkGateFlood(b *testing.B) {
	const streams, pings = 200, 2000
	for _, mode := range []string{"nogate", "gate"} {
		b.Run(mode, func(b *testing.B) {
			var gateA, gateB *transport.CopyGate
			if mode == "gate" {
				slots := 2 * runtime.GOMAXPROCS(0)
				gateA, gateB = transport.NewCopyGate(slots, 5*time.Millisecond), transport.NewCopyGate(slots, 5*time.Millisecond)
			}
			var wg sync.WaitGroup
			var closers []io.Closer
			defer func() {
				for _, c := range closers {
					c.Close()
				}
				wg.Wait()
			}()
			// splice opens a stream of relay to agent and splices it to a
			// loopback connection; it returns the backend's end and the
			// agent's stream.
			splice := func(agent, relay transport.Session, gate *transport.CopyGate) (near net.Conn, far transport.Stream) {
				nearPeer, front := tcpPair(b)
				ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
				defer cancel()
				tunnel, err := relay.OpenStream(ctx)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := tunnel.Write([]byte{0}); err != nil {
					b.Fatal(err)
				}
				far, err = agent.AcceptStream(ctx)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(far, make([]byte, 1)); err != nil {
					b.Fatal(err)
				}
				closers = append(closers, nearPeer, front, tunnel, far)
				wg.Go(func() { _, _ = transport.SpliceWith(front, tunnel, transport.SpliceOptions{Gate: gate}) })
				return nearPeer, far
			}

			agentA, relayA, closeA := yamuxSessions(b)
			closers = append(closers, closerFunc(closeA))
			near, far := splice(agentA, relayA, gateA)
			wg.Go(func() { _, _ = io.Copy(far, far) })
			alone := pingP50(b, near, pings)

			agentB, relayB, closeB := yamuxSessions(b)
			closers = append(closers, closerFunc(closeB))
			var moved atomic.Int64
			chunk := make([]byte, 256<<10)
			for range streams {
				near, far := splice(agentB, relayB, gateB)
				wg.Go(func() {
					for {
						if _, err := far.Write(chunk); err != nil {
							return
						}
					}
				})
				wg.Go(func() {
					buf := make([]byte, 256<<10)
					for {
						n, err := near.Read(buf)
						moved.Add(int64(n))
						if err != nil {
							return
						}
					}
				})
			}
			time.Sleep(time.Second) // let the flood reach its pace
			start, m0 := time.Now(), moved.Load()
			flood := pingP50(b, near, pings)
			rate := float64(moved.Load()-m0) / 1e6 / time.Since(start).Seconds()
			b.ReportMetric(alone, "alone-p50-µs")
			b.ReportMetric(flood, "flood-p50-µs")
			b.ReportMetric(flood/alone, "ratio")
			b.ReportMetric(rate, "flood-MB/s")
		})
	}
}

// pingP50 makes n 1-byte round trips on c and returns their median in µs.
func pingP50(b *testing.B, c net.Conn, n int) float64 {
	one := make([]byte, 1)
	ds := make([]time.Duration, n)
	for i := range n {
		start := time.Now()
		if _, err := c.Write(one); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, one); err != nil {
			b.Fatal(err)
		}
		ds[i] = time.Since(start)
	}
	slices.Sort(ds)
	return float64(ds[n/2].Nanoseconds()) / 1e3
}
