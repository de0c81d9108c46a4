package protocol_test

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/tetherhq/tether/protocol"
)

// allCodes lists every code with its stable wire name, its sentinel and
// whether it is temporary. Names and numbers must never change.
var allCodes = []struct {
	code      protocol.Code
	num       uint8
	name      string
	sentinel  *protocol.Error
	temporary bool
}{
	{protocol.CodeOK, 0, "ok", nil, false},
	{protocol.CodeUnknownService, 1, "unknown_service", protocol.ErrUnknownService, false},
	{protocol.CodeNotAllowed, 2, "not_allowed", protocol.ErrNotAllowed, false},
	{protocol.CodeTargetUnreachable, 3, "target_unreachable", protocol.ErrTargetUnreachable, true},
	{protocol.CodeTimeout, 4, "timeout", protocol.ErrTimeout, true},
	{protocol.CodeUnknownTenant, 5, "unknown_tenant", protocol.ErrUnknownTenant, false},
	{protocol.CodeNoAgent, 6, "no_agent", protocol.ErrNoAgent, true},
	{protocol.CodeUnauthenticated, 7, "unauthenticated", protocol.ErrUnauthenticated, false},
	{protocol.CodeBadRequest, 8, "bad_request", protocol.ErrBadRequest, false},
	{protocol.CodeInternal, 9, "internal", protocol.ErrInternal, true},
	{protocol.CodeUnavailable, 10, "unavailable", protocol.ErrUnavailable, true},
	{protocol.CodeUnsupportedVersion, 11, "unsupported_version", protocol.ErrUnsupportedVersion, false},
	{protocol.CodeInvalidToken, 12, "invalid_token", protocol.ErrInvalidToken, false},
	{protocol.CodeTokenExpired, 13, "token_expired", protocol.ErrTokenExpired, false},
	{protocol.CodeTokenUsedUp, 14, "token_used_up", protocol.ErrTokenUsedUp, false},
	{protocol.CodeUnknownAgent, 15, "unknown_agent", protocol.ErrUnknownAgent, false},
	{protocol.CodeLimitExceeded, 16, "limit_exceeded", protocol.ErrLimitExceeded, true},
	{protocol.CodeCertExpired, 17, "certificate_expired", protocol.ErrCertExpired, false},
	{protocol.CodeRevoked, 18, "revoked", protocol.ErrRevoked, false},
	{protocol.CodeRateLimited, 19, "rate_limited", protocol.ErrRateLimited, true},
	{protocol.CodeCertSuperseded, 20, "certificate_superseded", protocol.ErrCertSuperseded, false},
}

func TestCodes(t *testing.T) {
	for _, tc := range allCodes {
		t.Run(tc.name, func(t *testing.T) {
			if got := uint8(tc.code); got != tc.num {
				t.Errorf("got value %d, want %d", got, tc.num)
			}
			if got := tc.code.String(); got != tc.name {
				t.Errorf("String got %q, want %q", got, tc.name)
			}
			got, ok := protocol.ParseCode(tc.name)
			if !ok || got != tc.code {
				t.Errorf("ParseCode(%q) got %v, %v, want %v, true", tc.name, got, ok, tc.code)
			}
			if got := tc.code.Temporary(); got != tc.temporary {
				t.Errorf("Temporary got %v, want %v", got, tc.temporary)
			}
			if tc.sentinel != nil {
				if tc.sentinel.Code != tc.code || tc.sentinel.Message != "" {
					t.Errorf("sentinel got code %v message %q, want %v and no message", tc.sentinel.Code, tc.sentinel.Message, tc.code)
				}
				if got := tc.sentinel.Temporary(); got != tc.temporary {
					t.Errorf("sentinel Temporary got %v, want %v", got, tc.temporary)
				}
			}
		})
	}
}

// TestCodeStringAllValues checks every byte: known codes have unique names
// that parse back, unknown ones print as code_N and do not parse.
func TestCodeStringAllValues(t *testing.T) {
	seen := map[string]protocol.Code{}
	for i := range 256 {
		c := protocol.Code(i)
		s := c.String()
		if prev, dup := seen[s]; dup {
			t.Errorf("codes %d and %d both print as %q", prev, c, s)
		}
		seen[s] = c
		got, ok := protocol.ParseCode(s)
		if i < len(allCodes) {
			if !ok || got != c {
				t.Errorf("ParseCode(%q) got %v, %v, want %d, true", s, got, ok, i)
			}
			continue
		}
		if want := fmt.Sprintf("code_%d", i); s != want {
			t.Errorf("code %d: got %q, want %q", i, s, want)
		}
		if ok {
			t.Errorf("ParseCode(%q) got %v, true, want false for an unknown code", s, got)
		}
		if c.Temporary() {
			t.Errorf("code %d: got Temporary true, want false for an unknown code", i)
		}
	}
}

func TestParseCodeUnknown(t *testing.T) {
	for _, s := range []string{"", "OK", "Timeout", " timeout", "timeout ", "code_17", "code_1", "unknown"} {
		t.Run(fmt.Sprintf("%q", s), func(t *testing.T) {
			if got, ok := protocol.ParseCode(s); ok || got != 0 {
				t.Errorf("got %v, %v, want 0, false", got, ok)
			}
		})
	}
}

func TestErrorIs(t *testing.T) {
	tests := []struct {
		name     string
		err      error
		target   error
		wantIs   bool
		wantCode protocol.Code
	}{
		{"same code with message", protocol.Errorf(protocol.CodeNoAgent, "tenant acme"), protocol.ErrNoAgent, true, protocol.CodeNoAgent},
		{"sentinel itself", protocol.ErrTimeout, protocol.ErrTimeout, true, protocol.CodeTimeout},
		{"wrapped once", fmt.Errorf("open: %w", protocol.Errorf(protocol.CodeTimeout, "x")), protocol.ErrTimeout, true, protocol.CodeTimeout},
		{"wrapped twice", fmt.Errorf("a: %w", fmt.Errorf("b: %w", protocol.ErrNotAllowed)), protocol.ErrNotAllowed, true, protocol.CodeNotAllowed},
		{"joined", errors.Join(io.EOF, protocol.ErrUnknownTenant), protocol.ErrUnknownTenant, true, protocol.CodeUnknownTenant},
		{"ad-hoc target with the same code", protocol.ErrBadRequest, &protocol.Error{Code: protocol.CodeBadRequest, Message: "other text"}, true, protocol.CodeBadRequest},
		{"different code", protocol.Errorf(protocol.CodeNoAgent, "x"), protocol.ErrUnknownAgent, false, protocol.CodeNoAgent},
		{"unknown code", &protocol.Error{Code: 99}, protocol.ErrInternal, false, 99},
		{"plain error", errors.New("no_agent"), protocol.ErrNoAgent, false, protocol.CodeInternal},
		{"plain error with the same text", errors.New("timeout"), protocol.ErrTimeout, false, protocol.CodeInternal},
		{"protocol error is not io.EOF", protocol.ErrTimeout, io.EOF, false, protocol.CodeTimeout},
		{"nil", nil, protocol.ErrInternal, false, protocol.CodeOK},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := errors.Is(tc.err, tc.target); got != tc.wantIs {
				t.Errorf("errors.Is(%v, %v) got %v, want %v", tc.err, tc.target, got, tc.wantIs)
			}
			if got := protocol.CodeOf(tc.err); got != tc.wantCode {
				t.Errorf("CodeOf got %v, want %v", got, tc.wantCode)
			}
		})
	}
}

// TestErrorIsAgainstEverySentinel checks that an error matches its own
// sentinel and no other.
func TestErrorIsAgainstEverySentinel(t *testing.T) {
	for _, c := range allCodes {
		if c.sentinel == nil {
			continue
		}
		err := fmt.Errorf("wrapped: %w", protocol.Errorf(c.code, "detail"))
		for _, s := range allCodes {
			if s.sentinel == nil {
				continue
			}
			if got, want := errors.Is(err, s.sentinel), s.code == c.code; got != want {
				t.Errorf("errors.Is(%s error, %s sentinel) got %v, want %v", c.name, s.name, got, want)
			}
		}
	}
}

func TestErrorString(t *testing.T) {
	tests := []struct {
		name string
		err  *protocol.Error
		want string
	}{
		{"no message", protocol.ErrNoAgent, "no_agent"},
		{"message", protocol.Errorf(protocol.CodeTimeout, "after %ds", 5), "timeout: after 5s"},
		{"unknown code", &protocol.Error{Code: 77, Message: "m"}, "code_77: m"},
		{"format verbs in args are not expanded", protocol.Errorf(protocol.CodeInternal, "%s", "%d"), "internal: %d"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.err.Error(); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestErrorTemporary(t *testing.T) {
	// Callers test for temporariness through an interface, as with net.Error.
	type temporary interface{ Temporary() bool }
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"no agent", protocol.Errorf(protocol.CodeNoAgent, "x"), true},
		{"not allowed", protocol.Errorf(protocol.CodeNotAllowed, "x"), false},
		{"wrapped timeout", fmt.Errorf("w: %w", protocol.ErrTimeout), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var tmp temporary
			if !errors.As(tc.err, &tmp) {
				t.Fatalf("got %T, want an error with Temporary", tc.err)
			}
			if got := tmp.Temporary(); got != tc.want {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestSentinelsAreDistinct(t *testing.T) {
	seen := map[protocol.Code]bool{}
	for _, c := range allCodes {
		if c.sentinel == nil {
			continue
		}
		if seen[c.sentinel.Code] {
			t.Errorf("two sentinels carry code %v", c.sentinel.Code)
		}
		seen[c.sentinel.Code] = true
		if strings.Contains(c.sentinel.Error(), ":") {
			t.Errorf("sentinel %v got a message, want none", c.sentinel)
		}
	}
}
