package admin

import (
	"context"
	"crypto/cipher"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/relay/internal/audit"
)

// Audit queries of the admin API.
const (
	DefaultAuditPage = 100
	MaxAuditPage     = 1000
)

// AuditQuery is an operator's query of the audit trail: which records,
// and from where. Its filter's seq bounds and order are not used: a page
// is the newest Limit records older than Cursor.
type AuditQuery struct {
	AuditFilter
	// Cursor is the NextCursor of the previous page (or a record's
	// Cursor, for the records older than it); "" for the newest.
	Cursor string
}

// maxAuditCursor bounds the cursor a query carries: a vendor's is a
// decimal seq, a tenant's operator's auditCursorLen characters.
const maxAuditCursor = 64

// ParseAuditQuery reads an admin API audit query: tenant, agent, backend,
// kind (exact, or a prefix ending in "."), request (the records of one
// request id, as the relay's front doors and the agent's access log give
// it), since and until (RFC 3339 or a
// duration before now, like "2h"), limit (1 to MaxAuditPage, default
// DefaultAuditPage) and cursor (the next_cursor of the previous page,
// read by AuditPage, which knows whose it may be).
// Records come newest first. Errors are ErrInvalid.
func ParseAuditQuery(q url.Values, now time.Time) (AuditQuery, error) {
	f := AuditFilter{Tenant: q.Get("tenant"), Agent: q.Get("agent"), Backend: q.Get("backend"), Kind: q.Get("kind"), NewestFirst: true, Limit: DefaultAuditPage}
	if f.Request = strings.TrimSpace(q.Get("request")); f.Request != "" {
		if err := CheckRequestID(f.Request); err != nil {
			return AuditQuery{}, err
		}
	}
	for name, v := range map[string]string{"tenant": f.Tenant, "backend": f.Backend} {
		if v != "" {
			if err := identity.ValidateName(name, v); err != nil {
				return AuditQuery{}, invalid(err)
			}
		}
	}
	for name, v := range map[string]string{"agent": f.Agent, "kind": f.Kind} {
		if len(v) > 128 {
			return AuditQuery{}, invalidf("%s is longer than 128 bytes", name)
		}
	}
	var err error
	if f.Since, err = ParseWhen(q.Get("since"), now); err != nil {
		return AuditQuery{}, invalidf("since: %v", err)
	}
	if f.Until, err = ParseWhen(q.Get("until"), now); err != nil {
		return AuditQuery{}, invalidf("until: %v", err)
	}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > MaxAuditPage {
			return AuditQuery{}, invalidf("limit %q: want a number from 1 to %d", s, MaxAuditPage)
		}
		f.Limit = n
	}
	c := q.Get("cursor")
	if len(c) > maxAuditCursor || strings.Trim(c, auditCursorChars) != "" {
		return AuditQuery{}, badAuditCursor(c)
	}
	return AuditQuery{AuditFilter: f, Cursor: c}, nil
}

// auditCursorChars are the characters of cursors: base64url's, which
// include the decimal digits of a vendor's.
const auditCursorChars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

// badAuditCursor is the refusal of a cursor that is not one of the
// operator's pages: the same words whatever is wrong with it, so that a
// cursor of another tenant is refused like one made up.
func badAuditCursor(c string) error {
	return invalidf("cursor %q: not one this relay gave for this audit trail (use the next_cursor of a page you were given, or leave it out for the newest)", protocol.Clip(c, maxAuditCursor))
}

// AuditEntry is an audit record as an operator reads it with AuditPage.
// A vendor operator sees its Seq, the record's place in the relay's
// (the cluster's) one trail, and no Cursor; a tenant-scoped operator a
// Cursor and no Seq (zero, left out of JSON): see auditcursor.go.
type AuditEntry struct {
	audit.Record
	// Cursor stands for the record's place in the trail to a
	// tenant-scoped operator: the Cursor of an AuditQuery for the records
	// older than it.
	Cursor string `json:"cursor,omitempty"`
}

// AuditPage is a page of audit records, newest first, and the cursor of
// the next.
type AuditPage struct {
	// NextCursor, after a full page, is the Cursor of the next (older)
	// one: the seq of the page's last record in decimal for a vendor
	// operator, its Cursor for a tenant's. (It comes first in JSON, as it
	// did when the answer was a map.)
	NextCursor string       `json:"next_cursor,omitempty"`
	Records    []AuditEntry `json:"records"`
}

// AuditPage returns the newest q.Limit records matching q older than
// q.Cursor, newest first. A tenant-scoped operator sees its tenant's only,
// without their seqs: each carries a Cursor instead, and q.Cursor must be
// one its pages gave (another tenant's is refused, ErrInvalid, as one made
// up is). A vendor operator's cursors are seqs in decimal, as before
// cursors were sealed; a tenant's cursor works for one too when q names
// the tenant.
func (a *Admin) AuditPage(ctx context.Context, q AuditQuery) (AuditPage, error) {
	f := q.AuditFilter
	var err error
	if f.Tenant, err = a.scopedTenant(f.Tenant); err != nil {
		return AuditPage{}, err
	}
	f.NewestFirst, f.AfterSeq, f.BeforeSeq = true, 0, 0
	if f.Limit < 1 || f.Limit > MaxAuditPage {
		f.Limit = DefaultAuditPage
	}
	scoped := !a.scope.Vendor()
	if q.Cursor != "" {
		if f.BeforeSeq, err = a.auditCursorSeq(f.Tenant, q.Cursor, scoped); err != nil {
			return AuditPage{}, err
		}
	}
	recs, err := a.store.ListAudit(ctx, f)
	if err != nil {
		return AuditPage{}, err
	}
	p := AuditPage{Records: make([]AuditEntry, len(recs))}
	var sealer cipher.Block
	if scoped {
		sealer = tenantCursorBlock(&a.dir.AuditCursorKey, f.Tenant)
	}
	for i, r := range recs {
		p.Records[i].Record = r
		if scoped {
			p.Records[i].Seq = 0
			p.Records[i].Cursor = sealAuditCursorWith(sealer, r.Seq)
		}
	}
	if n := len(recs); n == f.Limit {
		if scoped {
			p.NextCursor = p.Records[n-1].Cursor
		} else {
			p.NextCursor = strconv.FormatInt(recs[n-1].Seq, 10)
		}
	}
	return p, nil
}

// auditCursorSeq reads a cursor: for a tenant-scoped operator only one
// sealed for its tenant; for a vendor a seq in decimal, or one sealed for
// the tenant its query names.
func (a *Admin) auditCursorSeq(tenant, cursor string, scoped bool) (int64, error) {
	if !scoped {
		if n, err := strconv.ParseInt(cursor, 10, 64); err == nil && n >= 1 {
			return n, nil
		}
	}
	if tenant != "" {
		if seq, ok := openAuditCursor(&a.dir.AuditCursorKey, tenant, cursor); ok {
			return seq, nil
		}
	}
	return 0, badAuditCursor(cursor)
}

// CheckRequestID checks a request id a person typed: 1 to 64 letters,
// digits or "-" (the relay's are 16 hexadecimal digits). Errors are
// ErrInvalid.
func CheckRequestID(id string) error {
	if id == "" || len(id) > 64 {
		return invalidf("request id %q: want 1 to 64 letters, digits or \"-\", such as 3f2a9c0d1e4b5a67", protocol.Clip(id, 64))
	}
	for _, r := range id {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r == '-') {
			return invalidf("request id %q: want letters, digits or \"-\" only, such as 3f2a9c0d1e4b5a67", protocol.Clip(id, 64))
		}
	}
	return nil
}

// ParseWhen parses an RFC 3339 time or a duration before now (e.g. "2h");
// "" is the zero time.
func ParseWhen(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, invalidf("duration %q is negative", s)
		}
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, invalidf("%q is neither an RFC 3339 time nor a duration such as 2h", s)
	}
	return t, nil
}
