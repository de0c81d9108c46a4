package admin

import (
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"
)

// FuzzParseAuditQuery checks that the admin API's audit query parser never
// panics on a hostile query string, classes every refusal as ErrInvalid,
// and keeps what it accepts within bounds.
func FuzzParseAuditQuery(f *testing.F) {
	for _, s := range []string{
		"", "tenant=acme&since=2h&limit=10", "cursor=42", "cursor=-1", "cursor=99999999999999999999", "cursor=AAAAAAAAAAAAAAAAAAAAAA", "cursor=a%2Bb", "cursor=" + strings.Repeat("9", 65),
		"since=2026-01-02T03:04:05Z&until=1h", "limit=0", "limit=1001", "kind=agent.", "since=-5m",
		"tenant=A%00", "backend=..", "since=9999999999h", "limit=1e3", "%zz",
		"request=3f2a9c0d1e4b5a67", "request=%25", "request=a_b", "request=" + strings.Repeat("a", 65),
	} {
		f.Add(s)
	}
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		af, err := ParseAuditQuery(q, now)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("ParseAuditQuery(%q): error %v is not ErrInvalid", raw, err)
			}
			return
		}
		if af.Limit < 1 || af.Limit > MaxAuditPage {
			t.Fatalf("ParseAuditQuery(%q): limit %d out of range", raw, af.Limit)
		}
		if strings.Trim(af.Request, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-") != "" || len(af.Request) > 64 {
			t.Fatalf("ParseAuditQuery(%q): request id %q accepted", raw, af.Request)
		}
		if af.BeforeSeq != 0 || af.AfterSeq != 0 || !af.NewestFirst {
			t.Fatalf("ParseAuditQuery(%q): got %+v", raw, af)
		}
		if len(af.Cursor) > maxAuditCursor || strings.Trim(af.Cursor, auditCursorChars) != "" {
			t.Fatalf("ParseAuditQuery(%q): cursor %q accepted", raw, af.Cursor)
		}
	})
}
