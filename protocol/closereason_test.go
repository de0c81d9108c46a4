package protocol_test

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/tetherhq/tether/protocol"
)

// What a relay refuses or ends a session for comes back, from the reason
// of its QUIC close, as the same error: code and message.
func TestCloseReasonRoundTrip(t *testing.T) {
	longest := strings.Repeat("m", protocol.MaxCloseReason-len("revoked: "))
	for _, c := range []struct {
		name string
		err  error
		want string
	}{
		{"revoked", protocol.Errorf(protocol.CodeRevoked, "agent a1 was revoked at 2026-12-07T19:30:00Z (laptop stolen)"),
			"revoked: agent a1 was revoked at 2026-12-07T19:30:00Z (laptop stolen)"},
		{"no message", protocol.ErrCertExpired, "certificate_expired"},
		{"colons in the message", protocol.Errorf(protocol.CodeUnauthenticated, "CA root 2 (sha256:ab): retired"), "unauthenticated: CA root 2 (sha256:ab): retired"},
		{"not UTF-8", protocol.Errorf(protocol.CodeLimitExceeded, "a\xffb"), "limit_exceeded: a\uFFFDb"},
		{"not a refusal", errors.New("disk on fire"), "internal: disk on fire"},
		{"longest that fits", protocol.Errorf(protocol.CodeRevoked, "%s", longest), "revoked: " + longest},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := protocol.CloseReason(c.err)
			if got != c.want {
				t.Fatalf("CloseReason(%v) = %q, want %q", c.err, got, c.want)
			}
			pe, ok := protocol.ParseCloseReason(got)
			if !ok {
				t.Fatalf("ParseCloseReason(%q) reports false, want the refusal", got)
			}
			want := protocol.ReplyFor(c.err)
			if pe.Code != want.Code || pe.Message != strings.ToValidUTF8(want.Message, "\uFFFD") {
				t.Fatalf("ParseCloseReason(%q) = %v %q, want %v %q", got, pe.Code, pe.Message, want.Code, want.Message)
			}
			if !errors.Is(pe, &protocol.Error{Code: want.Code}) || protocol.CodeOf(pe) != want.Code {
				t.Fatalf("the parsed refusal %v does not match its code %v", pe, want.Code)
			}
		})
	}
}

// A message too long for the close is cut at a rune boundary, marked, and
// the whole stays within MaxCloseReason.
func TestCloseReasonTruncated(t *testing.T) {
	for _, c := range []struct {
		name string
		msg  string
	}{
		{"one byte over", strings.Repeat("m", protocol.MaxCloseReason-len("revoked: ")+1)},
		{"runes straddling the limit", strings.Repeat("é", protocol.MaxCloseReason)},
		{"four-byte runes", strings.Repeat("🙂", protocol.MaxCloseReason)},
		{"a megabyte", strings.Repeat("x", 1<<20)},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := protocol.CloseReason(protocol.Errorf(protocol.CodeRevoked, "%s", c.msg))
			if len(got) > protocol.MaxCloseReason || !utf8.ValidString(got) {
				t.Fatalf("got a reason of %d bytes (valid UTF-8: %v), want at most %d valid bytes", len(got), utf8.ValidString(got), protocol.MaxCloseReason)
			}
			if len(got) < protocol.MaxCloseReason-utf8.UTFMax {
				t.Errorf("got a reason of %d bytes, want it cut close to %d", len(got), protocol.MaxCloseReason)
			}
			pe, ok := protocol.ParseCloseReason(got)
			if !ok {
				t.Fatalf("ParseCloseReason of the cut reason %q reports false", got)
			}
			kept, marked := strings.CutSuffix(pe.Message, "…")
			if pe.Code != protocol.CodeRevoked || !marked || !strings.HasPrefix(c.msg, kept) {
				t.Fatalf("got %v %q, want revoked and a prefix of the message marked \"…\"", pe.Code, pe.Message)
			}
		})
	}
}

// Any other close reason is not read as a refusal.
func TestParseCloseReasonRefuses(t *testing.T) {
	for _, s := range []string{
		"",
		"relay busy",
		"ok",
		"ok: fine",
		"revoked:no space",
		"Revoked: upper case",
		"code_200: a newer code",
		"revoked: \xff",
		"revoked: " + strings.Repeat("m", protocol.MaxCloseReason),
		" revoked: leading space",
	} {
		if pe, ok := protocol.ParseCloseReason(s); ok {
			t.Errorf("ParseCloseReason(%q) = %v, want false", s, pe)
		}
	}
	// A bare code name: how relays closed a refused hello before.
	if pe, ok := protocol.ParseCloseReason("revoked"); !ok || pe.Code != protocol.CodeRevoked || pe.Message != "" {
		t.Errorf("ParseCloseReason(%q) = %v, %v, want revoked without a message", "revoked", pe, ok)
	}
}
