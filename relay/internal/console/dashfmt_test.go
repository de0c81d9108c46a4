package console

import (
	"testing"
	"time"
)

func TestDashFormat(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		name, got, want string
	}{
		{"zero bytes", humanBytes(0), "0 B"},
		{"bytes", humanBytes(1023), "1023 B"},
		{"KiB", humanBytes(1536), "1.5 KiB"},
		{"MiB", humanBytes(12 << 20), "12 MiB"},
		{"largest unit", humanBytes(1 << 63), "8.0 EiB"},
		{"unknown RTT", humanRTT(0), "–"},
		{"µs RTT", humanRTT(850 * time.Microsecond), "850 µs"},
		{"ms RTT", humanRTT(12340 * time.Microsecond), "12.3 ms"},
		{"slow RTT", humanRTT(250 * time.Millisecond), "250 ms"},
		{"s RTT", humanRTT(1200 * time.Millisecond), "1.20 s"},
		{"never", humanAgo(now, time.Time{}), "–"},
		{"just now", humanAgo(now, now), "just now"},
		{"in the future", humanAgo(now, now.Add(time.Minute)), "just now"},
		{"seconds", humanAgo(now, now.Add(-45*time.Second)), "45 s ago"},
		{"minutes", humanAgo(now, now.Add(-3*time.Minute-10*time.Second)), "3 m ago"},
		{"hours", humanAgo(now, now.Add(-47*time.Hour)), "47 h ago"},
		{"days", humanAgo(now, now.Add(-72*time.Hour)), "3 d ago"},
		{"expires", humanUntil(now, now.Add(5*24*time.Hour+time.Hour)), "in 5 d"},
		{"expired", humanUntil(now, now.Add(-2*time.Hour)), "expired 2 h ago"},
		{"no expiry", humanUntil(now, time.Time{}), "–"},
		{"count", humanCount(1234567), "1\u202f234\u202f567"},
		{"small count", humanCount(int64(999)), "999"},
		{"negative count", humanCount(-1000), "-1\u202f000"},
		{"uint64 count", humanCount(uint64(1000)), "1\u202f000"},
		{"empty", orDash(""), "–"},
		{"uptime", reportUptime(now, now.Add(-90*time.Minute).UnixMilli()), "1 h"},
		{"no start", reportUptime(now, 0), "–"},
		{"audit detail", auditDetail(map[string]any{"b": 2, "a": "x"}), "a=x b=2"},
		// Values agents chose (an enrolment's hostname, an update's
		// error) cannot pass for pairs of their own.
		{"audit detail with spaces", auditDetail(map[string]any{"hostname": "db1 outcome=ok actor=operator:alice"}),
			`hostname="db1 outcome=ok actor=operator:alice"`},
		{"audit detail with a quote", auditDetail(map[string]any{"reason": `a" b="c`}), `reason="a\" b=\"c"`},
		{"audit detail empty", auditDetail(map[string]any{"reason": "", "n": 1.5}), `n=1.5 reason=""`},
		{"audit detail list", auditDetail(map[string]any{"grants": []any{"acme/db x=y", "globex"}}), `grants=["acme/db x=y","globex"]`},
		{"audit detail control", auditDetail(map[string]any{"os": "linux\nkind=operator.login"}), `os="linux\nkind=operator.login"`},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, tc.got, tc.want)
		}
	}
}

// Every page template parses and renders its blocks with empty data.
func TestDashTemplatesParse(t *testing.T) {
	pages := parseDashPages()
	for name, tmpl := range pages {
		for _, block := range []string{"page", "main"} {
			if tmpl.Lookup(block) == nil {
				t.Errorf("page %s has no block %q", name, block)
			}
		}
	}
}
