package relay

import (
	"testing"

	"github.com/tetherhq/tether/relay/internal/throttle"
)

// TestOpsLimits: the operator listeners keep their bounds where the
// process may open many descriptors, and where it may open few, the
// listeners that are on hold together at most a quarter of them.
func TestOpsLimits(t *testing.T) {
	for _, tc := range []struct {
		name                string
		metrics, admin, dl  bool
		fds                 uint64
		wantM, wantA, wantD throttle.ListenerLimits
		wantScaled          bool
	}{
		{"many descriptors", true, true, true, 524288,
			throttle.ListenerLimits{PerAddress: 16, PerNetwork: 64, Total: 256}, throttle.ListenerLimits{PerAddress: 64, PerNetwork: 256, Total: 512},
			throttle.ListenerLimits{PerAddress: 64, PerNetwork: 256, Total: 512}, false},
		{"limit unknown", true, true, true, 0,
			throttle.ListenerLimits{PerAddress: 16, PerNetwork: 64, Total: 256}, throttle.ListenerLimits{PerAddress: 64, PerNetwork: 256, Total: 512},
			throttle.ListenerLimits{PerAddress: 64, PerNetwork: 256, Total: 512}, false},
		{"1024, metrics only", true, false, false, 1024,
			throttle.ListenerLimits{PerAddress: 16, PerNetwork: 64, Total: 256}, throttle.ListenerLimits{PerAddress: 64, PerNetwork: 256, Total: 512},
			throttle.ListenerLimits{PerAddress: 64, PerNetwork: 256, Total: 512}, false},
		{"1024, all three", true, true, true, 1024,
			throttle.ListenerLimits{PerAddress: 16, PerNetwork: 51, Total: 51}, throttle.ListenerLimits{PerAddress: 64, PerNetwork: 102, Total: 102},
			throttle.ListenerLimits{PerAddress: 64, PerNetwork: 102, Total: 102}, true},
		{"64, metrics and admin", true, true, false, 64,
			throttle.ListenerLimits{PerAddress: 5, PerNetwork: 5, Total: 5}, throttle.ListenerLimits{PerAddress: 10, PerNetwork: 10, Total: 10},
			throttle.ListenerLimits{PerAddress: 10, PerNetwork: 10, Total: 10}, true}, // download is off: unused
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, a, d, scaled := opsLimits(tc.metrics, tc.admin, tc.dl, tc.fds)
			if m != tc.wantM || a != tc.wantA || d != tc.wantD || scaled != tc.wantScaled {
				t.Fatalf("got metrics %+v, admin %+v, download %+v, scaled %v; want %+v, %+v, %+v, %v", m, a, d, scaled, tc.wantM, tc.wantA, tc.wantD, tc.wantScaled)
			}
			on := 0
			for _, l := range []struct {
				on  bool
				lim throttle.ListenerLimits
			}{{tc.metrics, m}, {tc.admin, a}, {tc.dl, d}} {
				if l.on {
					on += l.lim.Total
				}
			}
			if tc.fds > 0 && scaled && uint64(on) > tc.fds/4 {
				t.Fatalf("the listeners that are on hold %d in all, more than a quarter of %d", on, tc.fds)
			}
		})
	}
}
