package metrics

import (
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/tetherhq/tether/protocol"
)

func TestStreamMetricLabels(t *testing.T) {
	for code, want := range map[protocol.Code][2]bool{
		protocol.CodeOK:                {true, true},
		protocol.CodeTargetUnreachable: {true, true},
		protocol.CodeUnknownService:    {true, false},
		protocol.CodeNoAgent:           {true, false},
		protocol.CodeNotAllowed:        {false, false}, // the tenant may not exist
		protocol.CodeUnknownTenant:     {false, false},
		protocol.CodeUnauthenticated:   {false, false},
		protocol.CodeBadRequest:        {false, false},
	} {
		if got := [2]bool{tenantVerified(code), serviceVerified(code)}; got != want {
			t.Errorf("%v: tenant, service labelled = %v, want %v", code, got, want)
		}
	}
}

// A tenant cannot grow tether_streams_opened_total without limit: its
// agent answers for any service name a backend asks for (a hostile agent
// says ok, or target_unreachable, to anything), and backends may ask for
// names a tenant chose. Before, every such name became a series of its
// own; now a tenant's first maxServiceLabels services are labelled and
// the rest counted under otherServices, while other tenants keep theirs.
func TestServiceLabelsBoundedPerTenant(t *testing.T) {
	m := New(nil, prometheus.NewCounterVec(prometheus.CounterOpts{Name: "refusals_total"}, []string{"door", "reason"}))
	const asked = 3 * maxServiceLabels
	for i := range asked {
		code := protocol.CodeOK
		if i%2 == 1 {
			code = protocol.CodeTargetUnreachable
		}
		m.StreamOpened("acme", fmt.Sprintf("svc-%d", i), "billing", code)
	}
	m.StreamOpened("globex", "db", "billing", protocol.CodeOK)
	services := map[string]map[string]bool{}
	total := 0.0
	ch := make(chan prometheus.Metric, asked+10)
	m.Streams.Collect(ch)
	close(ch)
	for pm := range ch {
		var d dto.Metric
		if err := pm.Write(&d); err != nil {
			t.Fatal(err)
		}
		l := map[string]string{}
		for _, p := range d.GetLabel() {
			l[p.GetName()] = p.GetValue()
		}
		if services[l["tenant"]] == nil {
			services[l["tenant"]] = map[string]bool{}
		}
		services[l["tenant"]][l["service"]] = true
		if l["tenant"] == "acme" {
			total += d.GetCounter().GetValue()
		}
	}
	if n := len(services["acme"]); n > maxServiceLabels+1 {
		t.Errorf("acme's %d services asked for made %d service labels, want at most %d", asked, n, maxServiceLabels+1)
	}
	if !services["acme"][otherServices] || !services["acme"]["svc-0"] {
		t.Errorf("acme's labels %d, %q present %v, svc-0 present %v", len(services["acme"]), otherServices, services["acme"][otherServices], services["acme"]["svc-0"])
	}
	if total != asked {
		t.Errorf("acme's opens counted %v, want %d", total, asked)
	}
	if !services["globex"]["db"] {
		t.Errorf("globex's service is not labelled: %v", services["globex"])
	}
}
