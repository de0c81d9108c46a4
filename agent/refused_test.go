package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
)

func TestFinalRefusal(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"revoked at the hello", fmt.Errorf("relay refused this agent: %w", protocol.Errorf(protocol.CodeRevoked, "agent a1 was revoked")), true},
		{"unknown agent", fmt.Errorf("relay refused this agent: %w", protocol.Errorf(protocol.CodeUnknownAgent, "not registered")), true},
		{"certificate expired", fmt.Errorf("relay refused this agent: %w", protocol.Errorf(protocol.CodeCertExpired, "expired")), true},
		// Refusals an operator can lift on the relay: keep trying.
		{"outside the tenant's networks", protocol.Errorf(protocol.CodeNotAllowed, "from 10.0.0.1"), false},
		{"agent limit", protocol.Errorf(protocol.CodeLimitExceeded, "limit"), false},
		{"protocol version", protocol.Errorf(protocol.CodeUnsupportedVersion, "upgrade"), false},
		{"draining relay", protocol.Errorf(protocol.CodeUnavailable, "draining"), false},
		{"unknown code from a newer relay", (&protocol.Reject{Code: "from_the_future"}).Err(), false},
		{"a TLS alert", errors.New("remote error: tls: bad certificate"), false},
		{"nil", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := finalRefusal(tc.err); got != tc.want {
				t.Errorf("finalRefusal(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

// An agent whose certificate expired while it was off does not dial at
// all: Run returns a RefusedError, which the command turns into exit
// status ExitRefused, saying what to do.
func TestRunWithExpiredCertificate(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	a := enrolled(t, root, root)
	leaf := *a.cert.Load().Leaf
	leaf.NotAfter = time.Now().Add(-time.Minute)
	a.cert.Store(&tls.Certificate{Leaf: &leaf})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := a.Run(ctx)
	re, ok := errors.AsType[*RefusedError](err)
	if !ok {
		t.Fatalf("Run = %v, want a *RefusedError", err)
	}
	if re.ExitCode() != ExitRefused || !errors.Is(err, protocol.ErrCertExpired) {
		t.Errorf("got exit code %d, code %v; want %d, certificate_expired", re.ExitCode(), protocol.CodeOf(err), ExitRefused)
	}
	for _, want := range []string{"certificate_expired", "enrol it again with a new join token", "tether-agent enroll --force --state-dir " + a.cfg.StateDir} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message %q lacks %q", err, want)
		}
	}
}

// refusedBy keeps the first refusal and stops the agent, however many
// slots report one.
func TestRefusedByKeepsTheFirst(t *testing.T) {
	root := newTestRoot(t, "tether.internal", "root")
	a := enrolled(t, root, root)
	stops := 0
	refused := a.refusedBy(func() { stops++ })
	refused(fmt.Errorf("relay refused this agent: %w", protocol.Errorf(protocol.CodeRevoked, "first")))
	refused(fmt.Errorf("relay refused this agent: %w", protocol.Errorf(protocol.CodeUnknownAgent, "second")))
	e := a.refused.Load()
	if e == nil || e.Err.Code != protocol.CodeRevoked || e.Err.Message != "first" {
		t.Fatalf("kept %+v, want the first refusal", e)
	}
	if stops != 2 {
		t.Errorf("stop called %d times, want each time (it is idempotent)", stops)
	}
}
