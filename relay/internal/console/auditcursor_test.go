package console

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/admin"
	"github.com/tetherhq/tether/relay/internal/store"
)

// auditAnswer is GET /api/v1/audit's answer, each record as it came.
type auditAnswer struct {
	Records    []map[string]any `json:"records"`
	NextCursor *string          `json:"next_cursor"`
}

// markOf is the mark a record of TestScopedAuditCursors carries.
func markOf(rec map[string]any) string {
	d, _ := rec["detail"].(map[string]any)
	m, _ := d["mark"].(string)
	return m
}

// isDecimal reports whether s is a number, as a raw seq is.
func isDecimal(s string) bool {
	_, err := strconv.ParseUint(s, 10, 64)
	return err == nil
}

// A tenant's operator reads its tenant's audit trail, whose records are
// interleaved with another tenant's and the relay's own, without ever
// seeing a seq (the trail's counter, shared by every tenant, would tell
// from its gaps how busy the others are): through the admin API, each
// record carries an opaque cursor instead, and next_cursor, also opaque,
// pages through every record of the tenant once, in order; the
// dashboard's audit search and tenant page link their pages with the
// same cursors. A cursor of another tenant, a raw seq and a made-up
// cursor are refused with 400 and the same words, and show nothing. A
// vendor operator's answers are as they were: seqs, and decimal cursors.
func TestScopedAuditCursors(t *testing.T) {
	r := startScopedRelay(t)
	ctx := context.Background()
	gusTok, _, err := r.adm.CreateOperatorToken(ctx, "gus", admin.Scope{Tenant: "globex", Role: admin.RoleViewer}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// 57 records of acme, each followed by 1 to 4 of globex, and now and
	// then one of the relay's: the gaps between acme's seqs vary.
	const acmeRecords = 57
	now := time.Now()
	var recs []store.AuditRecord
	for i := range acmeRecords {
		recs = append(recs, store.AuditRecord{At: now, Kind: "test.event", Outcome: "ok", Tenant: "acme", Actor: "relay", Detail: map[string]any{"mark": fmt.Sprintf("acme-mark-%02d", i)}})
		for j := range i%4 + 1 {
			recs = append(recs, store.AuditRecord{At: now, Kind: "test.event", Outcome: "ok", Tenant: "globex", Actor: "relay", Detail: map[string]any{"mark": fmt.Sprintf("globex-mark-%02d-%d", i, j)}})
		}
		if i%5 == 0 {
			recs = append(recs, store.AuditRecord{At: now, Kind: "test.event", Outcome: "ok", Actor: "relay", Detail: map[string]any{"mark": fmt.Sprintf("relay-mark-%02d", i)}})
		}
	}
	if err := r.dir.Store.AddAudit(ctx, recs); err != nil {
		t.Fatal(err)
	}
	c := r.client(t)
	bearer := func(tok string) map[string]string { return map[string]string{"Authorization": "Bearer " + tok} }
	get := func(tok string, q url.Values) (dashResponse, auditAnswer) {
		t.Helper()
		res := r.do(t, c, http.MethodGet, "/api/v1/audit?"+q.Encode(), nil, bearer(tok))
		var a auditAnswer
		if res.status == http.StatusOK {
			if err := json.Unmarshal([]byte(res.body), &a); err != nil {
				t.Fatalf("audit?%s: %v\n%s", q.Encode(), err, res.body)
			}
		}
		return res, a
	}

	// acme's viewer pages through acme's records, 4 a page.
	var marks []string
	cursors := map[string]bool{}
	var acmeCursor string   // a cursor of acme's, for the refusals below
	var afterAcmeCursor int // the index in marks of the record after it
	q := url.Values{"kind": {"test.event"}, "limit": {"4"}}
	for page := 0; ; page++ {
		if page > acmeRecords {
			t.Fatalf("more pages than records: %v", marks)
		}
		res, a := get(r.viewerTok, q)
		if res.status != http.StatusOK {
			t.Fatalf("acme's viewer, audit?%s: status %d: %s", q.Encode(), res.status, res.body)
		}
		if strings.Contains(res.body, `"seq"`) {
			t.Errorf("acme's viewer sees raw seqs (page %d):\n%s", page, res.body)
		}
		for _, rec := range a.Records {
			if rec["tenant"] != "acme" {
				t.Fatalf("acme's viewer sees a record of tenant %v: %v", rec["tenant"], rec)
			}
			cur, _ := rec["cursor"].(string)
			if cur == "" || isDecimal(cur) || cursors[cur] {
				t.Errorf("record %v: cursor %q; want an opaque cursor of its own", rec, cur)
			}
			cursors[cur] = true
			marks = append(marks, markOf(rec))
		}
		if a.NextCursor == nil {
			break
		}
		if isDecimal(*a.NextCursor) {
			t.Errorf("acme's viewer is given a raw seq as next_cursor: %s", *a.NextCursor)
		}
		if n := len(a.Records); n != 4 || a.Records[n-1]["cursor"] != *a.NextCursor {
			t.Errorf("page %d: %d records, next_cursor %q; want 4 and the last one's cursor", page, n, *a.NextCursor)
		}
		acmeCursor, afterAcmeCursor = *a.NextCursor, len(marks)
		q.Set("cursor", *a.NextCursor)
	}
	var want []string
	for i := acmeRecords - 1; i >= 0; i-- {
		want = append(want, fmt.Sprintf("acme-mark-%02d", i))
	}
	if strings.Join(marks, " ") != strings.Join(want, " ") {
		t.Errorf("acme's viewer paged through\n%v\nwant every record of acme once, newest first:\n%v", marks, want)
	}

	// The vendor sees what it always saw: seqs, and decimal cursors.
	res, a := get(r.tok, url.Values{"kind": {"test.event"}, "limit": {"4"}, "tenant": {"acme"}})
	if res.status != http.StatusOK || len(a.Records) != 4 || a.NextCursor == nil || !isDecimal(*a.NextCursor) {
		t.Fatalf("vendor: status %d, next %v:\n%s", res.status, a.NextCursor, res.body)
	}
	for _, rec := range a.Records {
		if _, ok := rec["seq"].(float64); !ok || rec["cursor"] != nil {
			t.Errorf("vendor's record %v: want its seq and no cursor", rec)
		}
	}
	if last := a.Records[3]["seq"].(float64); strconv.FormatFloat(last, 'f', -1, 64) != *a.NextCursor {
		t.Errorf("vendor's next_cursor %s, want the last record's seq %v", *a.NextCursor, last)
	}
	vendorSeq := *a.NextCursor

	// globex's viewer gets cursors of its own, which acme's viewer cannot use.
	res, a = get(gusTok, url.Values{"kind": {"test.event"}, "limit": {"2"}})
	if res.status != http.StatusOK || a.NextCursor == nil || strings.Contains(res.body, "acme") {
		t.Fatalf("globex's viewer: status %d:\n%s", res.status, res.body)
	}
	globexCursor := *a.NextCursor
	refusal := func(tok, cursor string) string {
		t.Helper()
		res, _ := get(tok, url.Values{"kind": {"test.event"}, "cursor": {cursor}})
		var e struct{ Error APIError }
		if res.status != http.StatusBadRequest || json.Unmarshal([]byte(res.body), &e) != nil || e.Error.Code != CodeBadRequest ||
			!strings.Contains(e.Error.Message, "not one this relay gave") || strings.Contains(res.body, "-mark-") {
			t.Errorf("cursor %q: status %d; want 400 bad_request, nothing shown:\n%s", cursor, res.status, res.body)
		}
		return strings.Replace(e.Error.Message, cursor, "CURSOR", 1)
	}
	forged := "AAAAAAAAAAAAAAAAAAAAAA"
	words := refusal(r.viewerTok, forged)
	for what, cursor := range map[string]string{"globex's cursor": globexCursor, "a raw seq": vendorSeq, "a seq of 1": "1", "a cursor cut short": acmeCursor[:len(acmeCursor)-1],
		"a cursor with a changed character": flipChar(acmeCursor)} {
		if got := refusal(r.viewerTok, cursor); got != words {
			t.Errorf("acme's viewer, %s: refused with %q, a made-up cursor with %q; want the same words", what, got, words)
		}
	}
	refusal(gusTok, acmeCursor)
	// acme's cursor on globex's trail: globex is not acme's to see.
	if res, _ := get(r.viewerTok, url.Values{"tenant": {"globex"}, "cursor": {acmeCursor}}); res.status != http.StatusNotFound || strings.Contains(res.body, "-mark-") {
		t.Errorf("acme's viewer, globex's trail with acme's cursor: status %d:\n%s", res.status, res.body)
	}
	// The vendor may follow a tenant's cursor on that tenant's trail.
	if res, a := get(r.tok, url.Values{"tenant": {"acme"}, "kind": {"test.event"}, "limit": {"1"}, "cursor": {acmeCursor}}); res.status != http.StatusOK || len(a.Records) != 1 ||
		markOf(a.Records[0]) != want[afterAcmeCursor] {
		t.Errorf("vendor with acme's cursor: status %d:\n%s", res.status, res.body)
	}

	// The dashboard: acme's viewer pages the audit search and acme's page
	// with the same cursors, and sees no seq in a link.
	browser := r.client(t)
	r.loginWith(t, browser, r.viewerTok)
	older := regexp.MustCompile(`href="([^"]+)" class="older"`)
	markRE := regexp.MustCompile(`acme-mark-\d\d|globex-mark|relay-mark`)
	for _, start := range []string{"/ui/audit?kind=test.event&limit=10", "/ui/tenants/acme"} {
		var seen []string
		link := start
		for page := 0; link != ""; page++ {
			if page > acmeRecords {
				t.Fatalf("%s: more pages than records", start)
			}
			res := r.do(t, browser, http.MethodGet, link, nil, nil)
			if res.status != http.StatusOK {
				t.Fatalf("%s: status %d: %s", link, res.status, res.body)
			}
			seen = append(seen, markRE.FindAllString(res.body, -1)...)
			link = ""
			if m := older.FindStringSubmatch(res.body); m != nil {
				link = strings.ReplaceAll(m[1], "&amp;", "&")
				u, err := url.Parse(link)
				if err != nil {
					t.Fatal(err)
				}
				for _, k := range []string{"cursor", "audit_before"} {
					if v := u.Query().Get(k); v != "" && isDecimal(v) {
						t.Errorf("%s: the link to older records carries a raw seq: %s", start, link)
					}
				}
			}
		}
		if strings.Join(seen, " ") != strings.Join(want, " ") {
			t.Errorf("%s: acme's viewer paged through\n%v\nwant\n%v", start, seen, want)
		}
	}
	if res := r.do(t, browser, http.MethodGet, "/ui/tenants/acme?audit_before="+url.QueryEscape(globexCursor), nil, nil); res.status != http.StatusBadRequest || strings.Contains(res.body, "-mark-") {
		t.Errorf("acme's page with globex's cursor: status %d", res.status)
	}
}

// flipChar changes the middle character of a cursor.
func flipChar(s string) string {
	b := []byte(s)
	if i := len(b) / 2; b[i] == 'A' {
		b[i] = 'B'
	} else {
		b[i] = 'A'
	}
	return string(b)
}
