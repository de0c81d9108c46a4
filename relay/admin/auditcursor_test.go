package admin

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/internal/store"
)

// A cursor opens, under its tenant's key, to the seq it was sealed with,
// and under no other tenant's; a cursor altered anywhere, cut, padded or
// made up opens to nothing. Cursors of neighbouring seqs share nothing
// that tells them apart from any other two.
func TestAuditCursorSealed(t *testing.T) {
	var key, other [32]byte
	rand.Read(key[:])
	rand.Read(other[:])
	for _, seq := range []int64{1, 2, 3, 1000, 1 << 40, math.MaxInt64} {
		c := sealAuditCursor(&key, "acme", seq)
		if len(c) != auditCursorLen || strings.Trim(c, auditCursorChars) != "" {
			t.Fatalf("seq %d: cursor %q; want %d base64url characters", seq, c, auditCursorLen)
		}
		if got, ok := openAuditCursor(&key, "acme", c); !ok || got != seq {
			t.Errorf("seq %d: opened to %d, %v", seq, got, ok)
		}
		for what, open := range map[string]func() (int64, bool){
			"globex's key":           func() (int64, bool) { return openAuditCursor(&key, "globex", c) },
			"another cluster's key":  func() (int64, bool) { return openAuditCursor(&other, "acme", c) },
			"a tenant named like it": func() (int64, bool) { return openAuditCursor(&key, "acme2", c) },
			"cut short":              func() (int64, bool) { return openAuditCursor(&key, "acme", c[:len(c)-1]) },
			"padded":                 func() (int64, bool) { return openAuditCursor(&key, "acme", c+"=") },
			"in standard base64": func() (int64, bool) {
				return openAuditCursor(&key, "acme", strings.NewReplacer("-", "+", "_", "/").Replace(c)+"==")
			},
			"with another last digit": func() (int64, bool) { return openAuditCursor(&key, "acme", c[:len(c)-1]+lastDigitOtherThan(c)) },
		} {
			if got, ok := open(); ok {
				t.Errorf("seq %d, cursor %s, %s: opened to %d", seq, c, what, got)
			}
		}
		raw, _ := base64.RawURLEncoding.DecodeString(c)
		for i := range len(raw) * 8 {
			b := append([]byte(nil), raw...)
			b[i/8] ^= 1 << (i % 8)
			if got, ok := openAuditCursor(&key, "acme", base64.RawURLEncoding.EncodeToString(b)); ok {
				t.Errorf("seq %d: cursor with bit %d flipped opened to %d", seq, i, got)
			}
		}
	}
	for _, s := range []string{"", "1", "42", strconv.FormatInt(math.MaxInt64, 10), "AAAAAAAAAAAAAAAAAAAAAA", "______________________", strings.Repeat("A", 23)} {
		if got, ok := openAuditCursor(&key, "acme", s); ok {
			t.Errorf("%q opened to %d", s, got)
		}
	}
	// Seq 0 and seqs beyond int64 are never sealed; blocks holding them
	// with the right magic do not open.
	if got, ok := openAuditCursor(&key, "acme", sealRaw(&key, "acme", 0)); ok {
		t.Errorf("a cursor of seq 0 opened to %d", got)
	}
	if got, ok := openAuditCursor(&key, "acme", sealRaw(&key, "acme", 1<<63)); ok {
		t.Errorf("a cursor of seq 2^63 opened to %d", got)
	}
	// Neighbours look no more alike than strangers: no shared prefix
	// beyond what chance gives.
	a, b := sealAuditCursor(&key, "acme", 500), sealAuditCursor(&key, "acme", 501)
	if a == b || a[:4] == b[:4] {
		t.Errorf("cursors of seqs 500 and 501 look alike: %s %s", a, b)
	}
}

// sealRaw seals any 64-bit value as sealAuditCursor seals a seq.
func sealRaw(key *[32]byte, tenant string, v uint64) string {
	var block [16]byte
	copy(block[:8], auditCursorMagic[:])
	for i := range 8 {
		block[15-i] = byte(v >> (8 * i))
	}
	tenantCursorBlock(key, tenant).Encrypt(block[:], block[:])
	return base64.RawURLEncoding.EncodeToString(block[:])
}

// lastDigitOtherThan is a base64url character other than c's last that
// keeps the encoding canonical (the last of 22 characters carries 2 bits
// of the 16 bytes: its 4 low bits are zero).
func lastDigitOtherThan(c string) string {
	for _, d := range []string{"A", "Q", "g", "w"} {
		if !strings.HasSuffix(c, d) {
			return d
		}
	}
	return "A"
}

// AuditPage with tenants' records interleaved: a tenant's operator pages
// through every record of its tenant once, newest first, by cursors that
// are not seqs, and no record it is given carries a seq; other tenants'
// cursors, seqs and made-up cursors are refused as ErrInvalid; a vendor
// pages by seqs in decimal, as before, and may use a tenant's cursor on
// the tenant's trail. Audit, for a tenant's operator, hides seqs too and
// refuses a filter by seq.
func TestAuditPageScoped(t *testing.T) {
	root, ctx := scopeFixture(t)
	viewer := root.For("operator:vic", Scope{Tenant: "acme", Role: RoleViewer})
	globex := root.For("operator:gus", Scope{Tenant: "globex", Role: RoleViewer})
	now := time.Now()
	const n = 31
	var recs []store.AuditRecord
	for i := range n {
		recs = append(recs, store.AuditRecord{At: now, Kind: "test.event", Outcome: "ok", Tenant: "acme", Detail: map[string]any{"i": float64(i)}})
		for range i%3 + 1 {
			recs = append(recs, store.AuditRecord{At: now, Kind: "test.event", Outcome: "ok", Tenant: "globex"})
		}
		recs = append(recs, store.AuditRecord{At: now, Kind: "test.event", Outcome: "ok"})
	}
	if err := root.store.AddAudit(ctx, recs); err != nil {
		t.Fatal(err)
	}

	var got []float64
	var cursors []string
	q := AuditQuery{AuditFilter: AuditFilter{Kind: "test.event", Limit: 5}}
	for range n + 1 {
		p, err := viewer.AuditPage(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		js, _ := json.Marshal(p)
		if strings.Contains(string(js), `"seq"`) {
			t.Errorf("the viewer's page carries seqs: %s", js)
		}
		for _, r := range p.Records {
			if r.Tenant != "acme" || r.Seq != 0 || r.Cursor == "" {
				t.Errorf("the viewer's record %+v", r)
			}
			got = append(got, r.Detail["i"].(float64))
			cursors = append(cursors, r.Cursor)
		}
		if p.NextCursor == "" {
			break
		}
		if _, err := strconv.ParseInt(p.NextCursor, 10, 64); err == nil || p.NextCursor != p.Records[len(p.Records)-1].Cursor {
			t.Errorf("next cursor %q", p.NextCursor)
		}
		q.Cursor = p.NextCursor
	}
	if len(got) != n {
		t.Fatalf("the viewer paged through %d records, want %d: %v", len(got), n, got)
	}
	for i, v := range got {
		if v != float64(n-1-i) {
			t.Fatalf("the viewer paged through %v; want %d down to 0", got, n-1)
		}
	}

	// Its cursors stand for the records: one opens to the page after it.
	if p, err := viewer.AuditPage(ctx, AuditQuery{AuditFilter: AuditFilter{Kind: "test.event", Limit: 1}, Cursor: cursors[10]}); err != nil || len(p.Records) != 1 || p.Records[0].Cursor != cursors[11] {
		t.Errorf("the page after the 11th record: %+v, %v", p, err)
	}

	// The vendor: seqs, decimal cursors; acme's cursor on acme's trail.
	vp, err := root.AuditPage(ctx, AuditQuery{AuditFilter: AuditFilter{Tenant: "acme", Kind: "test.event", Limit: 5}})
	if err != nil || len(vp.Records) != 5 || vp.NextCursor != strconv.FormatInt(vp.Records[4].Seq, 10) {
		t.Fatalf("the vendor's page: %+v, %v", vp, err)
	}
	for _, r := range vp.Records {
		if r.Seq == 0 || r.Cursor != "" {
			t.Errorf("the vendor's record %+v: want its seq and no cursor", r)
		}
	}
	// acme's 5th newest record's cursor leads the vendor where the seq of
	// that record does.
	byCursor, err := root.AuditPage(ctx, AuditQuery{AuditFilter: AuditFilter{Tenant: "acme", Kind: "test.event", Limit: 1}, Cursor: cursors[4]})
	bySeq, err2 := root.AuditPage(ctx, AuditQuery{AuditFilter: AuditFilter{Tenant: "acme", Kind: "test.event", Limit: 1}, Cursor: vp.NextCursor})
	if err != nil || err2 != nil || len(byCursor.Records) != 1 || len(bySeq.Records) != 1 || byCursor.Records[0].Seq != bySeq.Records[0].Seq {
		t.Errorf("the vendor with acme's cursor: %+v, %v; with the seq: %+v, %v", byCursor, err, bySeq, err2)
	}

	// Refusals: the same words whatever is wrong with the cursor.
	gp, err := globex.AuditPage(ctx, AuditQuery{AuditFilter: AuditFilter{Limit: 1}})
	if err != nil || gp.NextCursor == "" {
		t.Fatalf("globex's page: %+v, %v", gp, err)
	}
	refused := func(who string, a *Admin, q AuditQuery) string {
		t.Helper()
		p, err := a.AuditPage(ctx, q)
		if !errors.Is(err, ErrInvalid) || len(p.Records) != 0 {
			t.Errorf("%s, cursor %q: %d records, %v; want ErrInvalid", who, q.Cursor, len(p.Records), err)
			return ""
		}
		return strings.Replace(err.Error(), q.Cursor, "C", 1)
	}
	words := refused("viewer", viewer, AuditQuery{Cursor: "AAAAAAAAAAAAAAAAAAAAAA"})
	for what, c := range map[string]string{"globex's": gp.NextCursor, "a seq": vp.NextCursor, "one": "1", "zero": "0", "negative": "-5"} {
		if w := refused("viewer, "+what, viewer, AuditQuery{Cursor: c}); w != words {
			t.Errorf("viewer, %s cursor: %q; a made-up one: %q", what, w, words)
		}
	}
	refused("globex, acme's", globex, AuditQuery{Cursor: cursors[0]})
	refused("vendor without a tenant, acme's", root, AuditQuery{Cursor: cursors[0]})
	refused("vendor on globex's trail, acme's", root, AuditQuery{AuditFilter: AuditFilter{Tenant: "globex"}, Cursor: cursors[0]})
	refused("vendor, zero", root, AuditQuery{Cursor: "0"})

	// Audit: no seqs for a tenant's operator, nor filters by them.
	if rs, err := viewer.Audit(ctx, AuditFilter{Kind: "test.event", Limit: 1000}); err != nil || len(rs) != n || rs[0].Seq != 0 {
		t.Errorf("the viewer's Audit: %d records, %v", len(rs), err)
	}
	for _, f := range []AuditFilter{{BeforeSeq: 5}, {AfterSeq: 5}} {
		if _, err := viewer.Audit(ctx, f); !errors.Is(err, ErrInvalid) {
			t.Errorf("the viewer's Audit by seq %+v: %v; want ErrInvalid", f, err)
		}
	}
	if rs, err := root.Audit(ctx, AuditFilter{Tenant: "acme", Kind: "test.event", Limit: 1}); err != nil || len(rs) != 1 || rs[0].Seq == 0 {
		t.Errorf("the vendor's Audit: %+v, %v", rs, err)
	}
}

// FuzzOpenAuditCursor checks that reading a cursor never panics, that
// what opens is a seq that seals back to the very cursor (one encoding
// per seq), and that the query parser keeps cursors within bounds.
func FuzzOpenAuditCursor(f *testing.F) {
	var key [32]byte
	copy(key[:], "a fixed key for the fuzz corpus.")
	for _, s := range []string{"", "1", "-1", "AAAAAAAAAAAAAAAAAAAAAA", "AAAAAAAAAAAAAAAAAAAAAB", "AAAAAAAAAAAAAAAAAAAAA=",
		sealAuditCursor(&key, "acme", 1), sealAuditCursor(&key, "acme", math.MaxInt64), sealAuditCursor(&key, "globex", 7), "%00", "a+b/c"} {
		f.Add("acme", s)
	}
	f.Fuzz(func(t *testing.T, tenant, cursor string) {
		if seq, ok := openAuditCursor(&key, tenant, cursor); ok {
			if seq < 1 {
				t.Fatalf("%q opened to seq %d", cursor, seq)
			}
			if again := sealAuditCursor(&key, tenant, seq); again != cursor {
				t.Fatalf("%q opened to seq %d, which seals to %q", cursor, seq, again)
			}
		}
		q, err := ParseAuditQuery(map[string][]string{"cursor": {cursor}}, time.Time{})
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("cursor %q: error %v is not ErrInvalid", cursor, err)
			}
			return
		}
		if len(q.Cursor) > maxAuditCursor || strings.Trim(q.Cursor, auditCursorChars) != "" {
			t.Fatalf("cursor %q accepted as %q", cursor, q.Cursor)
		}
	})
}
