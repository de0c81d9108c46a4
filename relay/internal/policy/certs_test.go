package policy

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/relay/internal/store"
)

func TestStandingOf(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	renewed := store.Agent{ID: "a1", CertSerial: "02", CertIssuedAt: now.Add(-time.Minute), PrevCertSerial: "01", PrevCertUntil: now.Add(4 * time.Minute)}
	overlapOver := renewed
	overlapOver.PrevCertUntil = now
	enrolled := store.Agent{ID: "a1", CertSerial: "01", CertIssuedAt: now.Add(-time.Hour)}
	unrecorded := store.Agent{ID: "a1", CertSerial: "01"}
	for _, tc := range []struct {
		name   string
		a      store.Agent
		serial string
		want   CertStanding
	}{
		{"the newest", renewed, "02", CertNewest},
		{"the replaced one during the overlap", renewed, "01", CertReplaced},
		{"the replaced one when the overlap ended", overlapOver, "01", CertSuperseded},
		{"an older one", renewed, "00", CertSuperseded},
		{"the only one issued", enrolled, "01", CertNewest},
		{"another, with none replaced", enrolled, "", CertSuperseded},
		{"another, with none replaced (no serial)", store.Agent{CertSerial: "01", CertIssuedAt: now}, "", CertSuperseded},
		{"any, with none on record", unrecorded, "7f", CertUnrecorded},
	} {
		if got := StandingOf(tc.a, tc.serial, now); got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
	err := SupersededError(renewed, "00")
	if !errors.Is(err, protocol.ErrCertSuperseded) || !strings.Contains(err.Error(), "00") || !strings.Contains(err.Error(), "02") {
		t.Fatalf("SupersededError: %v; want certificate_superseded naming both certificates", err)
	}
}
