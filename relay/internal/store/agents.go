package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

// Agent is an enrolled agent.
type Agent struct {
	ID           string
	Tenant       string
	Hostname     string
	CreatedAt    time.Time
	CertSerial   string
	CertNotAfter time.Time
	// CertRoot is the printable fingerprint of the CA root that issued the
	// newest certificate; "" for certificates issued before CA rotation
	// existed.
	CertRoot string
	// CertIssuedAt is when the newest certificate (CertSerial) was issued;
	// zero when the store does not know (agents whose certificates were
	// all issued before migration 12), and then CertSerial is only the
	// certificate last seen.
	CertIssuedAt time.Time
	// CertBootID is the boot id of the agent process that received the
	// newest certificate by renewal ("" after an enrolment, or unknown).
	CertBootID string
	// PrevCertSerial is the certificate the newest one replaced, still
	// accepted before PrevCertUntil: the overlap of a renewal, ended early
	// by the first use of the newest one ("" and zero: none).
	PrevCertSerial string
	PrevCertUntil  time.Time
	// WindowCertSerial is the newest certificate issued in a restore
	// window (RestoreWindows) that the relay accepted from the agent
	// since the restore (RecordWindowCert), issued at WindowCertIssuedAt
	// ("" and zero: none). The agent's newest certificate is it or one
	// of its renewals until a newer certificate of a window displaces it.
	WindowCertSerial   string
	WindowCertIssuedAt time.Time
	// RevokedAt is zero unless the agent was revoked.
	RevokedAt     time.Time
	RevokedReason string
	// LastSeen is when a relay last heard from the agent, to within about
	// a minute while it is connected; zero if never.
	LastSeen time.Time
}

// AddAgent registers an agent; its tenant must exist.
func (s *Store) AddAgent(ctx context.Context, a Agent) error {
	err := s.tx(ctx, func(tx *sql.Tx) error { return addAgent(ctx, tx, a) })
	if s.unique(err) {
		return fmt.Errorf("agent %s: %w", a.ID, ErrExists)
	}
	return err
}

// addAgent inserts a within tx, after checking that its tenant exists.
func addAgent(ctx context.Context, tx *sql.Tx, a Agent) error {
	if _, err := tenant(ctx, tx, a.Tenant); err != nil {
		return err
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO agents (id, tenant, hostname, created_at, cert_serial, cert_not_after, cert_root, cert_issued_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
		a.ID, a.Tenant, a.Hostname, unix(a.CreatedAt), a.CertSerial, unix(a.CertNotAfter), a.CertRoot, unixMilliOrZero(a.CertIssuedAt))
	return err
}

const agentCols = `id, tenant, hostname, created_at, cert_serial, cert_not_after, cert_root, revoked_at, revoked_reason, last_seen,
	cert_issued_at, cert_boot_id, prev_cert_serial, prev_cert_until, window_cert_serial, window_cert_issued_at`

func scanAgent(sc interface{ Scan(...any) error }) (Agent, error) {
	var a Agent
	var created, notAfter, revoked, seen, issued, prevUntil, windowIssued int64
	if err := sc.Scan(&a.ID, &a.Tenant, &a.Hostname, &created, &a.CertSerial, &notAfter, &a.CertRoot, &revoked, &a.RevokedReason, &seen,
		&issued, &a.CertBootID, &a.PrevCertSerial, &prevUntil, &a.WindowCertSerial, &windowIssued); err != nil {
		return Agent{}, err
	}
	a.CreatedAt, a.CertNotAfter = fromUnix(created), fromUnix(notAfter)
	a.LastSeen = fromUnixOrZero(seen)
	a.CertIssuedAt, a.PrevCertUntil = fromUnixMilliOrZero(issued), fromUnixMilliOrZero(prevUntil)
	a.WindowCertIssuedAt = fromUnixMilliOrZero(windowIssued)
	if revoked != 0 {
		a.RevokedAt = fromUnixMilli(revoked)
	}
	return a, nil
}

// Agent returns one agent (run again when its connection was lost: an
// agent is looked up at every connection).
func (s *Store) Agent(ctx context.Context, id string) (Agent, error) {
	var a Agent
	err := s.read(ctx, func() (err error) {
		a, err = agent(ctx, s.db, id)
		return err
	})
	return a, err
}

func agent(ctx context.Context, q queryRower, id string) (Agent, error) {
	a, err := scanAgent(q.QueryRowContext(ctx, `SELECT `+agentCols+` FROM agents WHERE id = $1`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return Agent{}, fmt.Errorf("agent %s: %w", id, ErrNotFound)
	}
	return a, err
}

// ListAgents returns the agents of tenant ("" for all), sorted by tenant
// and id.
func (s *Store) ListAgents(ctx context.Context, tenant string) ([]Agent, error) {
	return s.queryAgents(ctx, `SELECT `+agentCols+` FROM agents WHERE $1 = '' OR tenant = $1 ORDER BY tenant, id`, tenant)
}

// queryAgents runs a query selecting agentCols and scans every row.
func (s *Store) queryAgents(ctx context.Context, query string, args ...any) ([]Agent, error) {
	rows, err := s.db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Agent
	for rows.Next() {
		a, err := scanAgent(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

// SetAgentCert records the serial, expiry and issuing CA root of the
// certificate an agent connected with, for an agent whose issued
// certificates the store does not know (Agent.CertIssuedAt zero): it
// records a certificate seen, not one issued, and keeps not knowing.
func (s *Store) SetAgentCert(ctx context.Context, id, serial string, notAfter time.Time, root string) error {
	res, err := s.exec(ctx, `UPDATE agents SET cert_serial = $2, cert_not_after = $3, cert_root = $4 WHERE id = $1 AND cert_issued_at = 0`, id, serial, unix(notAfter), root)
	if err != nil {
		return err
	}
	if n, _ := affected(res); n == 0 {
		return fmt.Errorf("agent %s (with no certificate issued on record): %w", id, ErrNotFound)
	}
	return nil
}

// AgentCert is a certificate the relay issued to an agent.
type AgentCert struct {
	Serial   string // hexadecimal
	NotAfter time.Time
	Root     string // the issuing CA root, printable fingerprint
	IssuedAt time.Time
	BootID   string // the agent process that received it ("" if unknown)
}

// RenewAgentCert records c as agent id's newest certificate, replacing
// newest (the one the caller read as newest: "" or anything for an agent
// whose issued certificates the store does not know), and replaced as the
// certificate that c replaces, still accepted until overlapUntil. When the
// agent's newest certificate is no longer newest (another renewal came
// first), it changes nothing and returns ErrCertChanged.
func (s *Store) RenewAgentCert(ctx context.Context, id, newest string, c AgentCert, replaced string, overlapUntil time.Time) error {
	res, err := s.exec(ctx, `UPDATE agents SET cert_serial = $3, cert_not_after = $4, cert_root = $5, cert_issued_at = $6, cert_boot_id = $7,
		prev_cert_serial = $8, prev_cert_until = $9 WHERE id = $1 AND (cert_serial = $2 OR cert_issued_at = 0)`,
		id, newest, c.Serial, unix(c.NotAfter), c.Root, c.IssuedAt.UnixMilli(), c.BootID, replaced, unixMilliOrZero(overlapUntil))
	if err != nil {
		return err
	}
	if n, _ := affected(res); n > 0 {
		return nil
	}
	if _, err := agent(ctx, s.db, id); err != nil {
		return err
	}
	return fmt.Errorf("agent %s: %w", id, ErrCertChanged)
}

// RecordWindowCert records c, a certificate issued in a restore window
// that agent id connected with, as its newest certificate (with no
// overlap for the one it replaces) and as the newest of a window seen
// from it (Agent.WindowCertSerial), replacing newest (the one the caller
// read as newest). When the agent's newest certificate is no longer
// newest, or a certificate of a window as new as c or newer was
// recorded meanwhile, it changes nothing and returns ErrCertChanged.
func (s *Store) RecordWindowCert(ctx context.Context, id, newest string, c AgentCert) error {
	res, err := s.exec(ctx, `UPDATE agents SET cert_serial = $3, cert_not_after = $4, cert_root = $5, cert_issued_at = $6, cert_boot_id = '',
		prev_cert_serial = '', prev_cert_until = 0, window_cert_serial = $3, window_cert_issued_at = $6
		WHERE id = $1 AND cert_serial = $2 AND window_cert_issued_at < $6`,
		id, newest, c.Serial, unix(c.NotAfter), c.Root, c.IssuedAt.UnixMilli())
	if err != nil {
		return err
	}
	if n, _ := affected(res); n > 0 {
		return nil
	}
	if _, err := agent(ctx, s.db, id); err != nil {
		return err
	}
	return fmt.Errorf("agent %s: %w", id, ErrCertChanged)
}

// EndCertOverlap ends, at now, the overlap during which agent id's
// previous certificate is still accepted, if serial is its newest one
// and the overlap has not ended: the newest certificate has been used.
// It reports whether it ended one.
func (s *Store) EndCertOverlap(ctx context.Context, id, serial string, now time.Time) (bool, error) {
	res, err := s.exec(ctx, `UPDATE agents SET prev_cert_until = $3 WHERE id = $1 AND cert_serial = $2 AND prev_cert_until > $3`, id, serial, now.UnixMilli())
	if err != nil {
		return false, err
	}
	n, err := affected(res)
	return n > 0, err
}

// RevokeAgent marks agent id revoked at now. Revoking twice keeps the first
// time and reason and reports no error, so the command can be repeated.
func (s *Store) RevokeAgent(ctx context.Context, id, reason string, now time.Time) (Agent, error) {
	var a Agent
	err := s.writeChanges(ctx, func(tx *sql.Tx) ([]Change, error) {
		res, err := tx.ExecContext(ctx, `UPDATE agents SET revoked_at = $2, revoked_reason = $3 WHERE id = $1 AND revoked_at = 0`, id, now.UnixMilli(), reason)
		if err != nil {
			return nil, err
		}
		n, err := affected(res)
		if err != nil {
			return nil, err
		}
		if a, err = agent(ctx, tx, id); err != nil || n == 0 {
			return nil, err
		}
		return []Change{{Kind: ChangeRevoke, Tenant: a.Tenant, Subject: id}}, nil
	})
	return a, err
}

// Revocation names a revoked agent.
type Revocation struct {
	Agent, Tenant string
	At            time.Time
}

// RevokedSince returns the agents revoked at or after since, oldest first.
func (s *Store) RevokedSince(ctx context.Context, since time.Time) ([]Revocation, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, tenant, revoked_at FROM agents WHERE revoked_at >= $1 AND revoked_at > 0 ORDER BY revoked_at`, since.UnixMilli())
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Revocation
	for rows.Next() {
		var r Revocation
		var at int64
		if err := rows.Scan(&r.Agent, &r.Tenant, &at); err != nil {
			return nil, err
		}
		r.At = fromUnixMilli(at)
		out = append(out, r)
	}
	return out, rows.Err()
}

// CountAgents returns how many agents of tenant are enrolled and not revoked.
func (s *Store) CountAgents(ctx context.Context, tenant string) (int, error) {
	return countAgents(ctx, s.db, tenant)
}

func countAgents(ctx context.Context, q queryRower, tenant string) (int, error) {
	var n int
	err := q.QueryRowContext(ctx, `SELECT count(*) FROM agents WHERE tenant = $1 AND revoked_at = 0`, tenant).Scan(&n)
	return n, err
}

// AgentsByCertRoot counts, by the CA root that issued their newest
// certificate, the agents that depend on that root at now: not revoked,
// certificate not expired. The key "" holds certificates issued before CA
// rotation existed.
func (s *Store) AgentsByCertRoot(ctx context.Context, now time.Time) (map[string]int, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT cert_root, count(*) FROM agents WHERE revoked_at = 0 AND cert_not_after > $1 GROUP BY cert_root`, unix(now))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var root string
		var n int
		if err := rows.Scan(&root, &n); err != nil {
			return nil, err
		}
		out[root] = n
	}
	return out, rows.Err()
}

// AgentsOnCertRoots returns up to limit agents, sorted by tenant and id,
// that depend at now on one of roots (as AgentsByCertRoot counts them).
func (s *Store) AgentsOnCertRoots(ctx context.Context, roots []string, now time.Time, limit int) ([]Agent, error) {
	if len(roots) == 0 {
		return nil, nil
	}
	args := []any{unix(now), limit}
	marks := make([]string, len(roots))
	for i, r := range roots {
		args = append(args, r)
		marks[i] = fmt.Sprintf("$%d", len(args))
	}
	return s.queryAgents(ctx, `SELECT `+agentCols+` FROM agents WHERE revoked_at = 0 AND cert_not_after > $1
		AND cert_root IN (`+strings.Join(marks, ", ")+`) ORDER BY tenant, id LIMIT $2`, args...)
}

// lastSeenChunk is how many agents one transaction of SetAgentsLastSeen
// updates: enough to make a fleet's update a few transactions, few enough
// that none holds the write lock for long.
const lastSeenChunk = 500

// SetAgentsLastSeen records when each agent of seen was last heard from.
// A time not after the one recorded changes nothing; unknown agents are
// skipped. It writes in a few transactions of prepared updates, so that a
// relay records a whole fleet at once.
func (s *Store) SetAgentsLastSeen(ctx context.Context, seen map[string]time.Time) error {
	ids := make([]string, 0, len(seen))
	for id := range seen {
		ids = append(ids, id)
	}
	sort.Strings(ids) // a stable lock order for concurrent writers
	for len(ids) > 0 {
		chunk := ids[:min(len(ids), lastSeenChunk)]
		ids = ids[len(chunk):]
		err := s.tx(ctx, func(tx *sql.Tx) error {
			st, err := tx.PrepareContext(ctx, `UPDATE agents SET last_seen = $2 WHERE id = $1 AND last_seen < $2`)
			if err != nil {
				return err
			}
			defer st.Close()
			for _, id := range chunk {
				if _, err := st.ExecContext(ctx, id, unix(seen[id])); err != nil {
					return fmt.Errorf("agent %s: %w", id, err)
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("record agents last seen: %w", err)
		}
	}
	return nil
}
