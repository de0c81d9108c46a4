package metrics

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tetherhq/tether/protocol/transport"
)

// Bytes counts the bytes streams move through the relay, by tenant and
// agent, while they move, so that a long-lived stream (a replication
// connection, a tunnel held open for hours) shows in the totals before it
// ends. Each stream's copy loops keep a transport.SpliceCounter (one
// uncontended atomic store per write); a scrape or a reading of the
// relay's history adds the counters of the streams still open to the
// totals of those that ended.
//
// The totals are kept per agent that ever carried a stream through this
// relay, which bounds them by the agents enrolled.
type Bytes struct {
	mu   sync.Mutex // guards done and live
	done map[AgentKey]Moved
	live map[*Flow]struct{}
}

// AgentKey names an agent.
type AgentKey struct{ Tenant, ID string }

// Moved is bytes moved each way.
type Moved struct {
	ToService   uint64 // backend to service
	FromService uint64 // service to backend
}

// Flow is one stream's running count. Give Counter to
// transport.SpliceCounting with the backend's side as its first stream
// (a to b is towards the service), and Close the flow when it returns.
type Flow struct {
	agent   AgentKey
	Counter transport.SpliceCounter
}

func newBytes() *Bytes {
	return &Bytes{done: map[AgentKey]Moved{}, live: map[*Flow]struct{}{}}
}

// Open starts counting a stream of agent of tenant.
func (b *Bytes) Open(tenant, agent string) *Flow {
	f := &Flow{agent: AgentKey{tenant, agent}}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.live[f] = struct{}{}
	return f
}

// Close ends the count of f once its copy has returned: what it moved
// joins its agent's totals. Closing a flow twice counts it once.
func (b *Bytes) Close(f *Flow) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.live[f]; !ok {
		return
	}
	delete(b.live, f)
	m := b.done[f.agent]
	m.ToService += uint64(max(f.Counter.AToB.Load(), 0))
	m.FromService += uint64(max(f.Counter.BToA.Load(), 0))
	b.done[f.agent] = m
}

// Totals returns the bytes moved so far by every agent's streams, those
// still open included. Successive calls never see a total go down.
func (b *Bytes) Totals() map[AgentKey]Moved {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make(map[AgentKey]Moved, len(b.done)+len(b.live))
	for k, m := range b.done {
		out[k] = m
	}
	for f := range b.live {
		m := out[f.agent]
		m.ToService += uint64(max(f.Counter.AToB.Load(), 0))
		m.FromService += uint64(max(f.Counter.BToA.Load(), 0))
		out[f.agent] = m
	}
	return out
}

var descBytes = prometheus.NewDesc("tether_stream_bytes_total",
	"Bytes moved through tunnels, by tenant and direction (to_service, from_service), counted while streams are open.",
	[]string{"tenant", "direction"}, nil)

// bytesCollector reports Bytes by tenant.
type bytesCollector struct{ b *Bytes }

func (c *bytesCollector) Describe(ch chan<- *prometheus.Desc) { ch <- descBytes }

func (c *bytesCollector) Collect(ch chan<- prometheus.Metric) {
	byTenant := map[string]Moved{}
	for k, m := range c.b.Totals() {
		t := byTenant[k.Tenant]
		t.ToService += m.ToService
		t.FromService += m.FromService
		byTenant[k.Tenant] = t
	}
	for tenant, m := range byTenant {
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(m.ToService), tenant, "to_service")
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(m.FromService), tenant, "from_service")
	}
}
