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
		if got := LostRenewal(tc.a, tc.issued, tc.w); got != tc.want {
			t.Errorf("%s: LostRenewal %v, want %v", tc.name, got, tc.want)
		}
	}
}
