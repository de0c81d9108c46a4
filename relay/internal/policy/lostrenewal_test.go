package policy

import (
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/internal/store"
)

func TestLostRenewal(t *testing.T) {
	backup := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	restored := backup.Add(24 * time.Hour)
	w := store.RestoreWindow{From: backup, To: restored}
	onRecord := store.Agent{ID: "a1", CertSerial: "s1", CertIssuedAt: backup.Add(-6 * time.Hour)}
	for _, tc := range []struct {
		name   string
		a      store.Agent
		issued time.Time
		w      store.RestoreWindow
		want   bool
	}{
		{"renewed after the backup", onRecord, backup.Add(6 * time.Hour), w, true},
		{"renewed just before the backup began its copy", onRecord, backup.Add(-10 * time.Second), w, true},
		{"older than the one on record", onRecord, backup.Add(-7 * time.Hour), w, false},
		{"issued before the backup, not the newest", onRecord, backup.Add(-2 * time.Hour), w, false},
		{"issued after the restore", onRecord, restored.Add(time.Minute), w, false},
		{"no restore", onRecord, backup.Add(6 * time.Hour), store.RestoreWindow{}, false},
		{"newest on record issued after the backup", store.Agent{CertSerial: "s2", CertIssuedAt: backup.Add(8 * time.Hour)}, backup.Add(6 * time.Hour), w, false},
		{"certificates not recorded", store.Agent{CertSerial: "s1"}, backup.Add(6 * time.Hour), w, false},
	} {
		var ws []store.RestoreWindow
		if tc.w != (store.RestoreWindow{}) {
			ws = []store.RestoreWindow{tc.w}
		}
		if got := LostRenewal(tc.a, tc.issued, ws); got != tc.want {
			t.Errorf("%s: LostRenewal %v, want %v", tc.name, got, tc.want)
		}
	}
}

// A thief holding a copy of an agent's key pair issued in the restore
// window (C1), superseded before the disaster by the agent's own renewal
// (C2), connects first after a restore without the audit file: C1 is
// accepted and recorded (it is the newest the relay has seen); the thief
// renews (C3, after the restore). The agent's own C2, newer than every
// certificate of the window seen, is still accepted and takes the
// agent's identity back; C1 is refused from then on.
func TestLostRenewalThiefFirst(t *testing.T) {
	backup := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	restored := backup.Add(30 * time.Hour)
	ws := []store.RestoreWindow{{From: backup, To: restored}}
	c0 := backup.Add(-6 * time.Hour)
	c1 := backup.Add(6 * time.Hour)  // stolen
	c2 := backup.Add(18 * time.Hour) // the agent's own newest
	rec := store.Agent{ID: "a1", CertSerial: "c0", CertIssuedAt: c0}
	if !LostRenewal(rec, c1, ws) {
		t.Fatal("C1, newer than the backup's C0 and the first of the window seen, refused")
	}
	// C1 recorded as newest and as the window's newest seen (what
	// store.RecordWindowCert does); the thief renews after the restore.
	c3 := restored.Add(time.Minute)
	rec = store.Agent{ID: "a1", CertSerial: "c3", CertIssuedAt: c3, WindowCertSerial: "c1", WindowCertIssuedAt: c1}
	if StandingOf(rec, "c2", restored.Add(2*time.Minute)) != CertSuperseded {
		t.Fatal("C2 not superseded")
	}
	if !LostRenewal(rec, c2, ws) {
		t.Fatalf("the agent's own C2 (issued %v, newer than the thief's C1 of %v) refused after the thief renewed", c2, c1)
	}
	// C2 recorded: C1, and anything older of the window, is refused.
	rec = store.Agent{ID: "a1", CertSerial: "c2", CertIssuedAt: c2, WindowCertSerial: "c2", WindowCertIssuedAt: c2}
	for _, issued := range []time.Time{c1, c2, backup.Add(time.Hour)} {
		if LostRenewal(rec, issued, ws) {
			t.Errorf("a certificate of the window issued %v accepted after C2 (%v) was recorded", issued, c2)
		}
	}
	// The agent renews (C4): C1 still refused, C3 (not of the window) too.
	rec = store.Agent{ID: "a1", CertSerial: "c4", CertIssuedAt: restored.Add(time.Hour), WindowCertSerial: "c2", WindowCertIssuedAt: c2}
	for _, issued := range []time.Time{c1, c3} {
		if LostRenewal(rec, issued, ws) {
			t.Errorf("certificate issued %v accepted after the agent renewed C2", issued)
		}
	}
}

// A copy of the backup's own certificate (C0) that connects first and
// renews after the restore does not keep out the agent, which renewed to
// C1 in the window: C1 is accepted over the copy's renewal.
func TestLostRenewalBackupCopyRenewedFirst(t *testing.T) {
	backup := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	restored := backup.Add(30 * time.Hour)
	ws := []store.RestoreWindow{{From: backup, To: restored}}
	c1 := backup.Add(6 * time.Hour)
	rec := store.Agent{ID: "a1", CertSerial: "c3", CertIssuedAt: restored.Add(time.Minute)}
	if !LostRenewal(rec, c1, ws) {
		t.Fatal("the agent's C1 of the window refused after a copy of the backup's C0 renewed")
	}
	// Several windows (restored twice): a certificate of either counts,
	// and one of no window does not.
	ws = append(ws, store.RestoreWindow{From: backup.Add(-72 * time.Hour), To: backup.Add(-60 * time.Hour)})
	rec = store.Agent{ID: "a1", CertSerial: "c0", CertIssuedAt: backup.Add(-80 * time.Hour)}
	for issued, want := range map[time.Time]bool{backup.Add(-70 * time.Hour): true, c1: true, backup.Add(-30 * time.Hour): false, restored.Add(time.Hour): false} {
		if got := LostRenewal(rec, issued, ws); got != want {
			t.Errorf("two windows, certificate issued %v: %v, want %v", issued, got, want)
		}
	}
}
