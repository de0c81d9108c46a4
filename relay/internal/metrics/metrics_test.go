package metrics

import (
	"testing"

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
