package audit

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/internal/store"
)

// fakeClock advances by a second at each reading.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(time.Second)
	return c.t
}

// trailNumbers reads the records of the audit trail's files at path, in
// order, and returns their detail's n; every line must be a whole record.
func trailNumbers(t *testing.T, path string) []int {
	t.Helper()
	files, err := Files(path)
	if err != nil {
		t.Fatal(err)
	}
	var ns []int
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			var l auditLine
			if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
				t.Fatalf("%s: a line that is not a whole record: %q: %v", filepath.Base(name), sc.Text(), err)
			}
			n, _ := l.Detail["n"].(float64)
			ns = append(ns, int(n))
		}
		f.Close()
		if err := sc.Err(); err != nil {
			t.Fatal(err)
		}
	}
	return ns
}

// Writing past the size rotates the file; the records across the files
// are all there, each once, in order; beyond MaxFiles the oldest rotated
// files are removed, whole.
func TestRotation(t *testing.T) {
	for _, tc := range []struct {
		name     string
		maxFiles int
	}{{"keep all", 0}, {"keep 3", 3}} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			ctx := context.Background()
			st, a, path := openLog(t, dir, slog.New(slog.DiscardHandler))
			clock := &fakeClock{t: time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)}
			a.SetRotation(Rotation{MaxSize: 4 << 10, MaxFiles: tc.maxFiles, Now: clock.Now})
			a.Start()
			const n = 400
			for i := range n {
				a.Record(Record{Kind: Stream, Outcome: OutcomeOK, Tenant: "acme", Detail: map[string]any{"n": i, "pad": strings.Repeat("x", 100)}})
				if i%50 == 49 {
					a.Add(Record{Kind: Stream, Outcome: OutcomeOK, Tenant: "other", Detail: map[string]any{"n": -1}}) // waited for: a batch ends here
				}
			}
			a.Stop()
			if err := a.Close(); err != nil {
				t.Fatal(err)
			}
			rs, err := rotatedFiles(path)
			if err != nil {
				t.Fatal(err)
			}
			if a.Rotations() < 5 {
				t.Fatalf("%d rotations of %d records of ~200 bytes at 4 KiB (in batches of up to 50), want at least 5", a.Rotations(), n)
			}
			if tc.maxFiles > 0 && len(rs) != tc.maxFiles {
				t.Errorf("%d rotated files, want %d (MaxFiles)", len(rs), tc.maxFiles)
			}
			if tc.maxFiles == 0 && int64(len(rs)) != a.Rotations() {
				t.Errorf("%d rotated files after %d rotations, want all kept", len(rs), a.Rotations())
			}
			for _, r := range rs {
				if fi, err := os.Stat(r.path); err != nil || fi.Mode().Perm() != 0o600 {
					t.Errorf("rotated file %s: %v, %v; want mode 0600", r.path, fi.Mode(), err)
				}
			}
			var got []int
			for _, v := range trailNumbers(t, path) {
				if v >= 0 {
					got = append(got, v)
				}
			}
			if len(got) == 0 || got[len(got)-1] != n-1 {
				t.Fatalf("records in the files end with %v, want the last, %d", got[max(len(got)-3, 0):], n-1)
			}
			first := got[0]
			if tc.maxFiles == 0 && first != 0 {
				t.Errorf("the first record in the files is %d, want 0: every file kept", first)
			}
			if tc.maxFiles > 0 && first == 0 {
				t.Errorf("the first record in the files is 0: the oldest files were not removed")
			}
			for i, v := range got {
				if v != first+i {
					t.Fatalf("record %d of the files is %d, want %d: lost or repeated at a file's boundary (%v)", i, v, first+i, got)
				}
			}
			recs, err := st.ListAudit(ctx, store.AuditFilter{Tenant: "acme", Limit: 2 * n})
			if err != nil || len(recs) != n {
				t.Fatalf("%d records in the store (%v), want %d", len(recs), err, n)
			}
		})
	}
}

// Rotated files that hold records written after the newest backup are
// kept beyond MaxFiles: a restore from that backup replays them.
func TestRotationKeepsFilesAfterBackup(t *testing.T) {
	dir := t.TempDir()
	_, a, path := openLog(t, dir, slog.New(slog.DiscardHandler))
	defer a.Close()
	start := time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)
	clock := &fakeClock{t: start}
	backupAt := start.Add(3500 * time.Millisecond) // after the third rotation, before the fourth
	a.SetRotation(Rotation{MaxSize: 1, MaxFiles: 2, Now: clock.Now, KeepAfter: func() (time.Time, error) { return backupAt, nil }})
	for i := range 10 { // a rotation after each
		a.Add(Record{Kind: Stream, Outcome: OutcomeOK, Tenant: "acme", Detail: map[string]any{"n": i}})
	}
	rs, err := rotatedFiles(path)
	if err != nil {
		t.Fatal(err)
	}
	// Rotated at start+1s … start+10s: those after the backup (4 … 10)
	// are kept, though MaxFiles is 2.
	if len(rs) != 7 || !rs[0].at.Equal(start.Add(4*time.Second)) {
		var names []string
		for _, r := range rs {
			names = append(names, filepath.Base(r.path))
		}
		t.Fatalf("rotated files %v; want the 7 rotated after the backup at %v", names, backupAt)
	}
	if ns := trailNumbers(t, path); ns[0] != 3 || len(ns) != 7 {
		t.Errorf("records in the files %v, want 3 to 9: those written after the backup", ns)
	}
}

// A relay that stopped between renaming the audit file and opening a new
// one (killed) left its last records, some marked store_error, in the
// rotated file only: the next start opens a new file and writes them to
// the store, reading the rotated file too.
func TestRotationCrashBeforeReopen(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	st, err := store.Open(ctx, filepath.Join(dir, "relay.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	path := filepath.Join(dir, "audit.log")
	var lines []byte
	for i := range 3 {
		l := auditLine{Record: Record{At: time.Now(), Kind: Stream, Outcome: OutcomeOK, Tenant: "acme", Key: fmt.Sprintf("k%d", i), Detail: map[string]any{"n": i}}}
		if i > 0 {
			l.StoreError = "connection refused"
		}
		b, err := json.Marshal(l)
		if err != nil {
			t.Fatal(err)
		}
		lines = append(append(lines, b...), '\n')
	}
	// The rename done, no new file opened.
	if err := os.WriteFile(RotatedName(path, time.Now()), lines, 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := Open(ctx, st, path, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	a.SetRotation(Rotation{MaxSize: 1 << 20})
	a.Start()
	a.Add(Record{Kind: Stream, Outcome: OutcomeOK, Tenant: "acme", Detail: map[string]any{"n": 3}})
	a.Stop()
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	recs, err := st.ListAudit(ctx, store.AuditFilter{Tenant: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	var got []int
	for _, r := range recs {
		n, _ := r.Detail["n"].(float64)
		got = append(got, int(n))
	}
	if fmt.Sprint(got) != "[1 2 3]" {
		t.Fatalf("records in the store %v; want [1 2 3]: the two marked store_error in the rotated file, before the new one", got)
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() == 0 {
		t.Fatalf("the new audit file: %v; want it created and written", err)
	}
}

func TestParseRotated(t *testing.T) {
	at := time.Date(2026, 12, 7, 19, 56, 33, 123456789, time.UTC)
	name := filepath.Base(RotatedName("/var/lib/tether-relay/audit.log", at))
	if name != "audit.log.20261207T195633.123456789Z" {
		t.Fatalf("RotatedName = %q", name)
	}
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{name, true},
		{"audit.log", false},
		{"audit.log.", false},
		{"audit.log.20261207T195633.123456789", false},
		{"audit.log.20261207T195633Z", false},
		{"audit.log.20261207T195633.123456789Z.gz", false},
		{"other.log.20261207T195633.123456789Z", false},
		{"audit.log.20261307T195633.123456789Z", false}, // month 13
		{"audit.log.2026120 T195633.123456789Z", false},
	} {
		got, ok := ParseRotated("audit.log", tc.name)
		if ok != tc.ok || (ok && !got.Equal(at)) {
			t.Errorf("ParseRotated(%q) = %v, %v; want ok %v", tc.name, got, ok, tc.ok)
		}
	}
}

// ParseRotated takes only the names RotatedName writes, and never
// panics.
func FuzzParseRotated(f *testing.F) {
	f.Add("audit.log", "audit.log.20261207T195633.123456789Z")
	f.Add("audit.log", "audit.log.99991231T235959.999999999Z")
	f.Add("a", "a.00010101T000000.000000000Z")
	f.Add("audit.log", "audit.log.2026-12-07T19:56:33Z")
	f.Add("", ".20261207T195633.123456789Z")
	f.Fuzz(func(t *testing.T, base, name string) {
		at, ok := ParseRotated(base, name)
		if !ok {
			return
		}
		if back := RotatedName(base, at); back != name {
			t.Fatalf("ParseRotated(%q, %q) = %v, but RotatedName gives %q", base, name, at, back)
		}
	})
}
