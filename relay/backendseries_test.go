package relay

import (
	"context"
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

// seriesWith counts the series of r's metrics that have label name with
// value.
func seriesWith(t *testing.T, r *Relay, name, value string) int {
	t.Helper()
	mfs, err := r.metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == name && l.GetValue() == value {
					n++
				}
			}
		}
	}
	return n
}

// TestRemovedBackendSeriesForgotten: the metrics series of a backend
// (tether_streams_opened_total and the refusal counters, by tenant,
// service and outcome) are dropped once the change feed tells of its
// removal. Before, every backend ever removed kept its series for as long
// as the relay ran.
func TestRemovedBackendSeriesForgotten(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	r := runRelay(t, Config{DataDir: dir, AgentListen: "127.0.0.1:0", DisableQUIC: true, SOCKSListen: Off, ConnectListen: Off})
	a := openAdmin(t, dir, "acme")
	refused := func(backend string) {
		t.Helper()
		if err := r.SetForwards(ctx, []Forward{{Listen: "127.0.0.1:0", Target: "echo.acme", Backend: backend}}); err != nil {
			t.Fatal(err)
		}
		c, err := net.Dial("tcp", r.doors.ForwardAddrs()["127.0.0.1:0"].String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.Copy(io.Discard, c); err != nil { // closed once refused (no agent)
			t.Fatal(err)
		}
		waitUntil(t, "the refusal of "+backend+"'s stream counted", func() bool { return seriesWith(t, r, "backend", backend) > 0 })
	}
	if _, err := a.AddBackend(ctx, "billing", []string{"acme/echo"}); err != nil {
		t.Fatal(err)
	}
	refused("billing")
	const n = 5
	for i := range n {
		name := fmt.Sprintf("gone-%d", i)
		if _, err := a.AddBackend(ctx, name, []string{"acme/echo"}); err != nil {
			t.Fatal(err)
		}
		refused(name)
		if err := a.RemoveBackend(ctx, name); err != nil {
			t.Fatal(err)
		}
		waitUntil(t, "the series of removed backend "+name+" dropped", func() bool { return seriesWith(t, r, "backend", name) == 0 })
	}
	if seriesWith(t, r, "backend", "billing") == 0 {
		t.Fatal("the series of backend billing, which stays, were dropped")
	}
}
