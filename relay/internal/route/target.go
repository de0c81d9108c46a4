// Package route takes a stream to "service S of tenant T" to a carrier
// that can open it: a connection of one of T's agents (and, in a cluster,
// a link to a relay holding one). Table holds the carriers by tenant;
// Router dials with retries across carriers and waits, just after a
// restart, for the agents of tenants it expects back (the roster).
package route

import (
	"net"
	"strconv"
	"strings"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
)

// TargetSuffix ends every address a backend can ask for:
// <service>.<tenant>.tether, with any port.
const TargetSuffix = ".tether"

// Target is a parsed backend request address.
type Target struct {
	Service string
	Tenant  string
}

// ParseTarget parses "<service>.<tenant>.tether" with an optional ":port"
// (the port is ignored: the agent's allowlist names the real address; it
// must still be a number from 0 to 65535 when given).
func ParseTarget(addr string) (Target, error) {
	host := addr
	if h, port, err := net.SplitHostPort(addr); err == nil {
		if _, err := strconv.ParseUint(port, 10, 16); err != nil && port != "" {
			return Target{}, protocol.Errorf(protocol.CodeBadRequest, "address %q: port %q is not a number from 0 to 65535", addr, port)
		}
		host = h
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	rest, ok := strings.CutSuffix(host, TargetSuffix)
	if !ok {
		return Target{}, protocol.Errorf(protocol.CodeBadRequest, "address %q is not of the form <service>.<tenant>%s", addr, TargetSuffix)
	}
	svc, tenant, ok := strings.Cut(rest, ".")
	if !ok || strings.Contains(tenant, ".") {
		return Target{}, protocol.Errorf(protocol.CodeBadRequest, "address %q is not of the form <service>.<tenant>%s", addr, TargetSuffix)
	}
	if err := identity.ValidateName("service", svc); err != nil {
		return Target{}, protocol.Errorf(protocol.CodeBadRequest, "%v", err)
	}
	if err := identity.ValidateName("tenant", tenant); err != nil {
		return Target{}, protocol.Errorf(protocol.CodeBadRequest, "%v", err)
	}
	return Target{Service: svc, Tenant: tenant}, nil
}
