package admin

import (
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
)

// Audit queries of the admin API.
const (
	DefaultAuditPage = 100
	MaxAuditPage     = 1000
)

// ParseAuditQuery reads an admin API audit query: tenant, agent, backend,
// kind (exact, or a prefix ending in "."), request (the records of one
// request id, as the relay's front doors and the agent's access log give
// it), since and until (RFC 3339 or a
// duration before now, like "2h"), limit (1 to MaxAuditPage, default
// DefaultAuditPage) and cursor (the next_cursor of the previous page).
// Records come newest first. Errors are ErrInvalid.
func ParseAuditQuery(q url.Values, now time.Time) (AuditFilter, error) {
	f := AuditFilter{Tenant: q.Get("tenant"), Agent: q.Get("agent"), Backend: q.Get("backend"), Kind: q.Get("kind"), NewestFirst: true, Limit: DefaultAuditPage}
	if f.Request = strings.TrimSpace(q.Get("request")); f.Request != "" {
		if err := CheckRequestID(f.Request); err != nil {
			return AuditFilter{}, err
		}
	}
	for name, v := range map[string]string{"tenant": f.Tenant, "backend": f.Backend} {
		if v != "" {
			if err := identity.ValidateName(name, v); err != nil {
				return AuditFilter{}, invalid(err)
			}
		}
	}
	for name, v := range map[string]string{"agent": f.Agent, "kind": f.Kind} {
		if len(v) > 128 {
			return AuditFilter{}, invalidf("%s is longer than 128 bytes", name)
		}
	}
	var err error
	if f.Since, err = ParseWhen(q.Get("since"), now); err != nil {
		return AuditFilter{}, invalidf("since: %v", err)
	}
	if f.Until, err = ParseWhen(q.Get("until"), now); err != nil {
		return AuditFilter{}, invalidf("until: %v", err)
	}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > MaxAuditPage {
			return AuditFilter{}, invalidf("limit %q: want a number from 1 to %d", s, MaxAuditPage)
		}
		f.Limit = n
	}
	if s := q.Get("cursor"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 1 {
			return AuditFilter{}, invalidf("cursor %q: not one this API returned", s)
		}
		f.BeforeSeq = n
	}
	return f, nil
}

// CheckRequestID checks a request id a person typed: 1 to 64 letters,
// digits or "-" (the relay's are 16 hexadecimal digits). Errors are
// ErrInvalid.
func CheckRequestID(id string) error {
	if id == "" || len(id) > 64 {
		return invalidf("request id %q: want 1 to 64 letters, digits or \"-\", such as 3f2a9c0d1e4b5a67", protocol.Clip(id, 64))
	}
	for _, r := range id {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r == '-') {
			return invalidf("request id %q: want letters, digits or \"-\" only, such as 3f2a9c0d1e4b5a67", protocol.Clip(id, 64))
		}
	}
	return nil
}

// ParseWhen parses an RFC 3339 time or a duration before now (e.g. "2h");
// "" is the zero time.
func ParseWhen(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, invalidf("duration %q is negative", s)
		}
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, invalidf("%q is neither an RFC 3339 time nor a duration such as 2h", s)
	}
	return t, nil
}
