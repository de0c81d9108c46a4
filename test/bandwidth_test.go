package test

import (
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/client"
)

// counter is an io.Writer that counts what it is given.
type counter struct{ n atomic.Int64 }

func (c *counter) Write(p []byte) (int, error) { c.n.Add(int64(len(p))); return len(p), nil }

// flow runs streams connections to service of tenant through d, each
// either downloading (reading from an endless source) or uploading (writing
// to a sink that counts), until the test's flows are stopped. It returns
// the counter of bytes moved: read by the backend for a download, received
// by the service for an upload, so that bytes waiting in buffers between
// do not count.
type flows struct {
	t    *testing.T
	wg   sync.WaitGroup
	mu   sync.Mutex // guards conns
	conn []net.Conn
}

func (f *flows) stop() {
	f.mu.Lock()
	for _, c := range f.conn {
		c.Close()
	}
	f.conn = nil
	f.mu.Unlock()
	f.wg.Wait()
}

func (f *flows) download(d *client.Dialer, addr string, streams int) *counter {
	got := new(counter)
	for range streams {
		c := waitDial(f.t, d, addr, 10*time.Second)
		f.mu.Lock()
		f.conn = append(f.conn, c)
		f.mu.Unlock()
		f.wg.Go(func() { io.Copy(got, c) })
	}
	return got
}

func (f *flows) upload(d *client.Dialer, addr string, streams int) {
	for range streams {
		c := waitDial(f.t, d, addr, 10*time.Second)
		f.mu.Lock()
		f.conn = append(f.conn, c)
		f.mu.Unlock()
		f.wg.Go(func() {
			buf := make([]byte, 64<<10)
			for {
				if _, err := c.Write(buf); err != nil {
					return
				}
			}
		})
	}
}

// rate measures c's bytes per second over span, after warm (the buffers
// between the ends fill first, at full speed).
func rateOf(c *counter, warm, span time.Duration) float64 {
	time.Sleep(warm) // a measurement window, not a wait for an event
	n0, t0 := c.n.Load(), time.Now()
	time.Sleep(span)
	return float64(c.n.Load()-n0) / time.Since(t0).Seconds()
}

// A tenant's bandwidth limit holds each way, for all its streams together,
// within ±20% over seconds, while another tenant's streams through the
// same relay are not slowed; a changed limit applies within 2 s without a
// restart, and a lifted one lets streams run free.
func TestTenantBandwidthLimit(t *testing.T) {
	r := startRelay(t, relayOpts{})
	for _, tn := range []string{"acme", "beta"} {
		r.addTenant(t, tn)
	}
	d := r.backend(t, "billing", "acme", "beta")
	received := map[string]*counter{"acme": new(counter), "beta": new(counter)}
	for tn, got := range received {
		svc := map[string]string{
			"source": tcpService(t, endlessSource),
			"sink":   tcpService(t, func(c net.Conn) { io.Copy(got, c) }),
		}
		startAgent(t, r, tn, agentOpts{services: svc, transport: "tcp", logLevel: "info"})
	}
	waitDial(t, d, "source.acme.tether:1", 20*time.Second).Close()
	waitDial(t, d, "source.beta.tether:1", 20*time.Second).Close()

	// beta alone, for reference.
	f := &flows{t: t}
	betaAlone := rateOf(f.download(d, "source.beta.tether:1", 2), time.Second, 2*time.Second)
	f.stop()
	t.Logf("beta alone: %.1f MiB/s", betaAlone/(1<<20))

	const limit = 4 << 20
	r.admin(t, "tenant", "limits", "acme", "--bandwidth", "4MiB")
	r.waitOutput(fmt.Sprintf(`"tenant":"acme","bytes_per_second":%d`, limit), 2*time.Second)

	within := func(what string, got, want float64) {
		t.Helper()
		t.Logf("%s: %.2f MiB/s (limit %.2f MiB/s)", what, got/(1<<20), want/(1<<20))
		if got < 0.8*want || got > 1.2*want {
			t.Errorf("%s: %.2f MiB/s, want %.2f MiB/s ± 20%%", what, got/(1<<20), want/(1<<20))
		}
	}
	// Downloads: three acme streams share the limit; beta downloads at
	// the same time.
	f = &flows{t: t}
	acmeDown := f.download(d, "source.acme.tether:1", 3)
	betaDown := f.download(d, "source.beta.tether:1", 2)
	var betaRate float64
	var wg sync.WaitGroup
	wg.Go(func() { betaRate = rateOf(betaDown, time.Second, 3*time.Second) })
	within("acme's downloads on 3 streams", rateOf(acmeDown, time.Second, 3*time.Second), limit)
	wg.Wait()
	f.stop()
	t.Logf("beta beside acme's limited downloads: %.1f MiB/s (%.2f× alone)", betaRate/(1<<20), betaRate/betaAlone)
	if betaRate < 5*limit {
		t.Errorf("beta downloaded %.1f MiB/s beside acme, want it unthrottled (well above acme's %d MiB/s)", betaRate/(1<<20), limit>>20)
	}

	// Uploads, counted where the service receives them.
	f = &flows{t: t}
	f.upload(d, "sink.acme.tether:1", 2)
	f.upload(d, "sink.beta.tether:1", 1)
	wg.Go(func() { betaRate = rateOf(received["beta"], time.Second, 3*time.Second) })
	within("acme's uploads on 2 streams", rateOf(received["acme"], time.Second, 3*time.Second), limit)
	wg.Wait()
	f.stop()
	if betaRate < 5*limit {
		t.Errorf("beta uploaded %.1f MiB/s beside acme, want it unthrottled", betaRate/(1<<20))
	}

	// A new limit applies within 2 s, without a restart.
	const raised = 12 << 20
	r.admin(t, "tenant", "limits", "acme", "--bandwidth", "12MiB")
	r.waitOutput(fmt.Sprintf(`"tenant":"acme","bytes_per_second":%d`, raised), 2*time.Second)
	f = &flows{t: t}
	within("acme's downloads after the limit was raised", rateOf(f.download(d, "source.acme.tether:1", 2), time.Second, 3*time.Second), raised)
	f.stop()

	// Lifted, the limit no longer holds acme back.
	r.admin(t, "tenant", "limits", "acme", "--bandwidth", "0")
	r.waitOutput("tenant bandwidth limit lifted", 2*time.Second)
	f = &flows{t: t}
	free := rateOf(f.download(d, "source.acme.tether:1", 2), time.Second, 2*time.Second)
	f.stop()
	t.Logf("acme without a limit: %.1f MiB/s", free/(1<<20))
	if free < 3*raised {
		t.Errorf("acme downloaded %.1f MiB/s with its limit lifted, want it unthrottled", free/(1<<20))
	}
}
