package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tetherhq/tether/protocol/release"
)

// Release is a published agent release. Its binary is kept in the store
// as a blob named by its SHA-256 (OpenBlob); the three small signed files
// are kept in its row.
type Release struct {
	Version, OS, Arch, Channel string
	SHA256                     string // of the binary, lower-case hex
	Size                       int64
	ExpiresAt                  time.Time
	KeyID                      string // the minisign key id that signed it, as printed
	PublishedAt                time.Time
	// The signed files besides the binary; filled by Release, not by
	// Releases.
	BinarySignature, Manifest, ManifestSignature []byte
}

// blobPart is the size of one row of a blob: small enough that reading or
// writing a row never holds much memory.
const blobPart = 1 << 20

// AddRelease records a release and stores binary, which must hash to
// r.SHA256 and be r.Size bytes long; a release of the same version, OS,
// architecture and channel is ErrExists. A binary already stored (the same
// content) is stored once.
func (s *Store) AddRelease(ctx context.Context, r Release, binary io.Reader) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if err := s.putBlob(ctx, tx, r.SHA256, r.Size, binary); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO releases (version, os, arch, channel, sha256, size, expires_at, key_id, dir, published_at, binary_signature, manifest, manifest_signature)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, '', $9, $10, $11, $12)`,
			r.Version, r.OS, r.Arch, r.Channel, r.SHA256, r.Size, unix(r.ExpiresAt), r.KeyID, unix(r.PublishedAt), r.BinarySignature, r.Manifest, r.ManifestSignature)
		return err
	})
	if s.unique(err) {
		return fmt.Errorf("release %s %s/%s %s: %w", r.Version, r.OS, r.Arch, r.Channel, ErrExists)
	}
	return err
}

// putBlob stores data under its SHA-256, which must be sum (hex), checking
// both the hash and the size; an existing blob is kept.
func (s *Store) putBlob(ctx context.Context, tx *sql.Tx, sum string, size int64, data io.Reader) error {
	sum = strings.ToLower(sum)
	// The blob's first part, locked (PostgreSQL) until the transaction
	// ends: a RemoveRelease deleting the blob meanwhile, because no
	// release it sees refers to it, either deleted it before (it is
	// stored again here) or waits for this release's row, and keeps it.
	var part int
	switch err := tx.QueryRowContext(ctx, `SELECT part FROM blobs WHERE sha256 = $1 AND part = 0`+s.d.lockRows(), sum).Scan(&part); {
	case err == nil:
		return nil
	case !errors.Is(err, sql.ErrNoRows):
		return err
	}
	h := sha256.New()
	buf := make([]byte, blobPart)
	var n int64
	for part := 0; ; part++ {
		k, err := io.ReadFull(data, buf)
		if k > 0 {
			h.Write(buf[:k])
			n += int64(k)
			if _, err := tx.ExecContext(ctx, `INSERT INTO blobs (sha256, part, data) VALUES ($1, $2, $3)`, sum, part, buf[:k]); err != nil {
				return err
			}
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("read blob %s: %w", sum, err)
		}
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sum || n != size {
		return fmt.Errorf("blob content does not match: got %d bytes with SHA-256 %s, want %d bytes with %s", n, got, size, sum)
	}
	return nil
}

// OpenBlob returns a reader of the blob stored under sum (hex), which
// reads it a part at a time.
func (s *Store) OpenBlob(ctx context.Context, sum string) (io.Reader, error) {
	sum = strings.ToLower(sum)
	ok, err := exists(ctx, s.db, `SELECT count(*) FROM blobs WHERE sha256 = $1`, sum)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("blob %s: %w", sum, ErrNotFound)
	}
	return &blobReader{ctx: ctx, db: s.db, sum: sum}, nil
}

type blobReader struct {
	ctx  context.Context
	db   *sql.DB
	sum  string
	part int
	buf  []byte
	done bool
}

func (b *blobReader) Read(p []byte) (int, error) {
	for len(b.buf) == 0 {
		if b.done {
			return 0, io.EOF
		}
		err := b.db.QueryRowContext(b.ctx, `SELECT data FROM blobs WHERE sha256 = $1 AND part = $2`, b.sum, b.part).Scan(&b.buf)
		if errors.Is(err, sql.ErrNoRows) {
			b.done = true
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("read blob %s part %d: %w", b.sum, b.part, err)
		}
		b.part++
	}
	n := copy(p, b.buf)
	b.buf = b.buf[n:]
	return n, nil
}

const releaseCols = `version, os, arch, channel, sha256, size, expires_at, key_id, published_at`

func scanRelease(sc interface{ Scan(...any) error }, extra ...any) (Release, error) {
	var r Release
	var exp, pub int64
	if err := sc.Scan(append([]any{&r.Version, &r.OS, &r.Arch, &r.Channel, &r.SHA256, &r.Size, &exp, &r.KeyID, &pub}, extra...)...); err != nil {
		return Release{}, err
	}
	r.ExpiresAt, r.PublishedAt = fromUnix(exp), fromUnix(pub)
	return r, nil
}

// Releases returns the releases of version ("" for all), newest first,
// without their signed files.
func (s *Store) Releases(ctx context.Context, version string) ([]Release, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+releaseCols+`
		FROM releases WHERE $1 = '' OR version = $1 ORDER BY published_at DESC, version, os, arch, channel`, version)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Release
	for rows.Next() {
		r, err := scanRelease(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// Release returns one release with its signed files.
func (s *Store) Release(ctx context.Context, version, os, arch, channel string) (Release, error) {
	var sig, man, manSig []byte
	r, err := scanRelease(s.db.QueryRowContext(ctx, `SELECT `+releaseCols+`, binary_signature, manifest, manifest_signature
		FROM releases WHERE version = $1 AND os = $2 AND arch = $3 AND channel = $4`, version, os, arch, channel), &sig, &man, &manSig)
	if errors.Is(err, sql.ErrNoRows) {
		return Release{}, fmt.Errorf("release %s %s/%s %s: %w", version, os, arch, channel, ErrNotFound)
	}
	if err != nil {
		return Release{}, err
	}
	if man == nil {
		return Release{}, fmt.Errorf("release %s %s/%s %s: its files were never imported into the store (see the relay's log at start)", version, os, arch, channel)
	}
	r.BinarySignature, r.Manifest, r.ManifestSignature = sig, man, manSig
	return r, nil
}

// releaseDirFiles are the files of a signed release in a directory, as
// importReleaseDirs reads them: the binary first.
var releaseDirFiles = [4]string{release.BinaryFile, release.BinarySignatureFile, release.ManifestFile, release.ManifestSignatureFile}

// importReleaseDirs moves the releases published before release files were
// kept in the store (schema version 8) into it: their files were copied to
// a directory whose absolute path the row holds. A row whose files cannot
// be read is left as it is; serving it fails with an error saying so.
func (s *Store) importReleaseDirs(ctx context.Context) error {
	rows, err := s.db.QueryContext(ctx, `SELECT version, os, arch, channel, sha256, size, dir FROM releases WHERE dir <> '' AND manifest IS NULL`)
	if err != nil {
		return err
	}
	type pending struct {
		version, os, arch, channel, sum, dir string
		size                                 int64
	}
	var todo []pending
	for rows.Next() {
		var p pending
		if err := rows.Scan(&p.version, &p.os, &p.arch, &p.channel, &p.sum, &p.size, &p.dir); err != nil {
			rows.Close()
			return err
		}
		todo = append(todo, p)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, p := range todo {
		var files [4][]byte
		ok := true
		for i, name := range releaseDirFiles {
			if files[i], err = os.ReadFile(filepath.Join(p.dir, name)); err != nil {
				ok = false
				break
			}
		}
		if !ok {
			continue
		}
		err := s.tx(ctx, func(tx *sql.Tx) error {
			if err := s.putBlob(ctx, tx, p.sum, p.size, bytes.NewReader(files[0])); err != nil {
				return err
			}
			_, err := tx.ExecContext(ctx, `UPDATE releases SET dir = '', binary_signature = $5, manifest = $6, manifest_signature = $7
				WHERE version = $1 AND os = $2 AND arch = $3 AND channel = $4`, p.version, p.os, p.arch, p.channel, files[1], files[2], files[3])
			return err
		})
		if err != nil {
			return fmt.Errorf("import release %s %s/%s %s from %s: %w", p.version, p.os, p.arch, p.channel, p.dir, err)
		}
	}
	return nil
}

// Rollout states.
const (
	RolloutActive     = "active"
	RolloutHalted     = "halted"
	RolloutSuperseded = "superseded"
)

// Rollout offers a version to a selection of agents: Agents, else
// Tenants, else Percent of all agents.
type Rollout struct {
	ID        int64
	Version   string
	Percent   int
	Tenants   []string
	Agents    []string
	HaltAt    float64 // halt when this fraction of the agents offered failed; 0 never
	Batch     int     // at most this many agents updating at once; 0 no limit
	State     string
	Reason    string
	CreatedAt time.Time
	UpdatedAt time.Time
}

// AddRollout starts a rollout; the active one, if any, is superseded. A
// version with no release is ErrNotFound. That is checked in the same
// transaction as RemoveRelease checks for the active rollout (both take
// the change feed's order lock first), so a rollout started while its
// release is being removed either is refused or makes the removal refused:
// never an active rollout of a release that is gone.
func (s *Store) AddRollout(ctx context.Context, r Rollout) (int64, error) {
	var id int64
	err := s.writeChanges(ctx, func(tx *sql.Tx) ([]Change, error) {
		published, err := exists(ctx, tx, `SELECT count(*) FROM releases WHERE version = $1`, r.Version)
		if err != nil {
			return nil, err
		}
		if !published {
			return nil, fmt.Errorf("version %s: no release published (removed, or never published): %w", r.Version, ErrNotFound)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE rollouts SET state = $1, updated_at = $2 WHERE state = $3`, RolloutSuperseded, unix(r.CreatedAt), RolloutActive); err != nil {
			return nil, err
		}
		err = tx.QueryRowContext(ctx, `INSERT INTO rollouts (version, percent, tenants, agents, halt_at, batch, state, created_at, updated_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) RETURNING id`,
			r.Version, r.Percent, strings.Join(r.Tenants, ","), strings.Join(r.Agents, ","), r.HaltAt, r.Batch, RolloutActive, unix(r.CreatedAt)).Scan(&id)
		return []Change{{Kind: ChangeRollout, Subject: fmt.Sprint(id)}}, err
	})
	return id, err
}

// Rollouts returns rollouts, newest first; only active ones when active.
func (s *Store) Rollouts(ctx context.Context, active bool) ([]Rollout, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, version, percent, tenants, agents, halt_at, batch, state, reason, created_at, updated_at
		FROM rollouts WHERE NOT $1 OR state = $2 ORDER BY id DESC`, active, RolloutActive)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Rollout
	for rows.Next() {
		var r Rollout
		var tenants, agents string
		var created, updated int64
		if err := rows.Scan(&r.ID, &r.Version, &r.Percent, &tenants, &agents, &r.HaltAt, &r.Batch, &r.State, &r.Reason, &created, &updated); err != nil {
			return nil, err
		}
		r.Tenants, r.Agents = splitList(tenants), splitList(agents)
		r.CreatedAt, r.UpdatedAt = fromUnix(created), fromUnix(updated)
		out = append(out, r)
	}
	return out, rows.Err()
}

func splitList(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

// ActiveRollout returns the active rollout, or ErrNotFound.
func (s *Store) ActiveRollout(ctx context.Context) (Rollout, error) {
	rs, err := s.Rollouts(ctx, true)
	if err != nil {
		return Rollout{}, err
	}
	if len(rs) == 0 {
		return Rollout{}, fmt.Errorf("active rollout: %w", ErrNotFound)
	}
	return rs[0], nil
}

// HaltRollout halts rollout id if it is active and reports whether it did.
func (s *Store) HaltRollout(ctx context.Context, id int64, reason string, now time.Time) (bool, error) {
	var halted bool
	err := s.writeChanges(ctx, func(tx *sql.Tx) ([]Change, error) {
		res, err := tx.ExecContext(ctx, `UPDATE rollouts SET state = $1, reason = $2, updated_at = $3 WHERE id = $4 AND state = $5`,
			RolloutHalted, reason, unix(now), id, RolloutActive)
		if err != nil {
			return nil, err
		}
		n, err := affected(res)
		if halted = n > 0; !halted {
			return nil, err
		}
		return []Change{{Kind: ChangeRollout, Subject: fmt.Sprint(id)}}, err
	})
	return halted, err
}

// AgentUpdate is where one agent stands with one version.
type AgentUpdate struct {
	Agent, Version, Tenant string
	Rollout                int64
	State                  string
	Reason, Message        string
	From                   string
	UpdatedAt              time.Time
}

// SetAgentUpdate records an agent's update state for a version.
func (s *Store) SetAgentUpdate(ctx context.Context, u AgentUpdate) error {
	return s.tx(ctx, func(tx *sql.Tx) error { return s.setAgentUpdate(ctx, tx, u) })
}

func (s *Store) setAgentUpdate(ctx context.Context, tx *sql.Tx, u AgentUpdate) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO agent_updates (agent, version, tenant, rollout, state, reason, message, from_version, updated_at, seq)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, `+s.d.agentUpdateSeq("$2")+`)
		ON CONFLICT (agent, version) DO UPDATE SET tenant = excluded.tenant, rollout = CASE WHEN excluded.rollout = 0 THEN agent_updates.rollout ELSE excluded.rollout END,
			state = excluded.state, reason = excluded.reason, message = excluded.message,
			from_version = CASE WHEN excluded.from_version = '' THEN agent_updates.from_version ELSE excluded.from_version END, updated_at = excluded.updated_at,
			seq = excluded.seq`,
		u.Agent, u.Version, u.Tenant, u.Rollout, u.State, u.Reason, u.Message, u.From, unix(u.UpdatedAt))
	return err
}

// ClaimAgentUpdate records u (an offer) unless the agent's state for the
// version shows an update in flight: downloading, downloaded or applied
// since staleBefore, or offered since offeredBefore (an offer not taken
// up by then was lost with its session). Of the relays of a cluster
// holding sessions of one agent, one offers it the update. It reports
// whether u was recorded.
func (s *Store) ClaimAgentUpdate(ctx context.Context, u AgentUpdate, staleBefore, offeredBefore time.Time) (bool, error) {
	res, err := s.exec(ctx, `INSERT INTO agent_updates (agent, version, tenant, rollout, state, reason, message, from_version, updated_at, seq)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, `+s.d.agentUpdateSeq("$2")+`)
		ON CONFLICT (agent, version) DO UPDATE SET tenant = excluded.tenant, rollout = excluded.rollout,
			state = excluded.state, reason = excluded.reason, message = excluded.message,
			from_version = CASE WHEN excluded.from_version = '' THEN agent_updates.from_version ELSE excluded.from_version END, updated_at = excluded.updated_at,
			seq = excluded.seq
		WHERE NOT (agent_updates.state IN ('downloading', 'downloaded', 'applied') AND agent_updates.updated_at >= $10)
			AND NOT (agent_updates.state = 'offered' AND agent_updates.updated_at >= $11)`,
		u.Agent, u.Version, u.Tenant, u.Rollout, u.State, u.Reason, u.Message, u.From, unix(u.UpdatedAt), unix(staleBefore), unix(offeredBefore))
	if err != nil {
		return false, err
	}
	n, err := affected(res)
	return n > 0, err
}

const agentUpdateCols = `agent, version, tenant, rollout, state, reason, message, from_version, updated_at`

func scanAgentUpdate(sc interface{ Scan(...any) error }) (AgentUpdate, error) {
	var u AgentUpdate
	var at int64
	err := sc.Scan(&u.Agent, &u.Version, &u.Tenant, &u.Rollout, &u.State, &u.Reason, &u.Message, &u.From, &at)
	u.UpdatedAt = fromUnix(at)
	return u, err
}

// AgentUpdates returns every update state of version ("" for all),
// newest first (AgentUpdatePage returns them a page at a time).
func (s *Store) AgentUpdates(ctx context.Context, version string) ([]AgentUpdate, error) {
	// A WHERE clause only when version is given, not "$1 = '' OR version
	// = $1": a plan made for both cannot use the index on version, and
	// the rollout loop reads one version's rows every few seconds, among
	// every version's.
	where, args := agentUpdateWhere(version, "", "")
	return s.queryAgentUpdates(ctx, `SELECT `+agentUpdateCols+` FROM agent_updates`+where+` ORDER BY updated_at DESC, agent`, args...)
}

// AgentUpdatesSince returns the update states of version written since
// mark, in no particular order, and the mark to pass next time: with 0,
// every one; with a mark it returned, at least every row written or
// changed since the read that returned it, by any process on the store,
// whatever the order in which their writes committed (and possibly some
// read then). The rollout loop reads the active version's states every
// few seconds on every relay of a cluster, thousands of rows at fleet
// scale, of which a handful change between two reads: it keeps them, and
// reads only what changed. Rows written around the store (by hand, a
// backup restored) may be missed until a read from 0.
func (s *Store) AgentUpdatesSince(ctx context.Context, version string, mark int64) ([]AgentUpdate, int64, error) {
	next, err := s.d.agentUpdateMark(ctx, s.db)
	if err != nil {
		return nil, 0, err
	}
	fromRows := next < 0
	if fromRows {
		next = mark
	}
	rows, err := s.db.QueryContext(ctx, `SELECT `+agentUpdateCols+`, seq FROM agent_updates WHERE version = $1 AND seq >= $2`, version, mark)
	if err != nil {
		return nil, 0, err
	}
	defer rows.Close()
	var out []AgentUpdate
	for rows.Next() {
		var u AgentUpdate
		var at, seq int64
		if err := rows.Scan(&u.Agent, &u.Version, &u.Tenant, &u.Rollout, &u.State, &u.Reason, &u.Message, &u.From, &at, &seq); err != nil {
			return nil, 0, err
		}
		u.UpdatedAt = fromUnix(at)
		if fromRows {
			next = max(next, seq+1)
		}
		out = append(out, u)
	}
	return out, next, rows.Err()
}

// queryAgentUpdates runs q, a SELECT of agentUpdateCols, and returns its
// rows.
func (s *Store) queryAgentUpdates(ctx context.Context, q string, args ...any) ([]AgentUpdate, error) {
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []AgentUpdate
	for rows.Next() {
		u, err := scanAgentUpdate(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, rows.Err()
}

// AgentUpdateKey is where an agent's update state stands in the order in
// which AgentUpdatePage lists them: (UpdatedAt, Agent, Version)
// descending, newest first, ties broken by agent and version.
type AgentUpdateKey struct {
	UpdatedAt      time.Time
	Agent, Version string
}

// Key is u's place in the order of AgentUpdatePage.
func (u AgentUpdate) Key() AgentUpdateKey {
	return AgentUpdateKey{UpdatedAt: u.UpdatedAt, Agent: u.Agent, Version: u.Version}
}

// AgentUpdateFilter selects a page of agents' update states.
type AgentUpdateFilter struct {
	Version, Tenant, State string // "" for any
	// After, when set, is the key of the last row of the previous page:
	// the page starts after it.
	After *AgentUpdateKey
	// Limit is the most rows of the page (1000 when not positive).
	Limit int
}

// agentUpdateWhere is the WHERE clause ("" for none) and its arguments
// selecting the rows of version and tenant ("" for any), and, when
// state is not "", of that state.
func agentUpdateWhere(version, tenant, state string) (string, []any) {
	var conds []string
	var args []any
	for _, c := range []struct{ col, v string }{{"version", version}, {"tenant", tenant}, {"state", state}} {
		if c.v != "" {
			args = append(args, c.v)
			conds = append(conds, fmt.Sprintf("%s = $%d", c.col, len(args)))
		}
	}
	if len(conds) == 0 {
		return "", nil
	}
	return " WHERE " + strings.Join(conds, " AND "), args
}

// AgentUpdatePage returns a page of the update states f selects, newest
// first (AgentUpdateKey). Following the pages lists every row once; a row
// updated while they are followed moves to the front (a later first page
// shows it) and is left out of the pages after its old place.
func (s *Store) AgentUpdatePage(ctx context.Context, f AgentUpdateFilter) ([]AgentUpdate, error) {
	q, args := agentUpdatePageQuery(f)
	return s.queryAgentUpdates(ctx, q, args...)
}

// agentUpdatePageQuery is the query of AgentUpdatePage and its arguments.
func agentUpdatePageQuery(f AgentUpdateFilter) (string, []any) {
	where, args := agentUpdateWhere(f.Version, f.Tenant, f.State)
	if f.After != nil {
		// A row value: both engines compare it in the order of an index
		// on the same columns, and seek to it.
		n := len(args)
		cond := fmt.Sprintf("(updated_at, agent, version) < ($%d, $%d, $%d)", n+1, n+2, n+3)
		args = append(args, unix(f.After.UpdatedAt), f.After.Agent, f.After.Version)
		if where == "" {
			where = " WHERE " + cond
		} else {
			where += " AND " + cond
		}
	}
	if f.Limit <= 0 {
		f.Limit = 1000
	}
	return `SELECT ` + agentUpdateCols + ` FROM agent_updates` + where +
		fmt.Sprintf(` ORDER BY updated_at DESC, agent DESC, version DESC LIMIT %d`, f.Limit), args
}

// CountAgentUpdates counts the update states of version and tenant ("" for
// any) by state. Without a version, an agent counts once for each version
// it was offered.
func (s *Store) CountAgentUpdates(ctx context.Context, version, tenant string) (map[string]int, error) {
	where, args := agentUpdateWhere(version, tenant, "")
	rows, err := s.db.QueryContext(ctx, `SELECT state, count(*) FROM agent_updates`+where+` GROUP BY state`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var state string
		var n int
		if err := rows.Scan(&state, &n); err != nil {
			return nil, err
		}
		out[state] = n
	}
	return out, rows.Err()
}

// AgentUpdate returns one agent's state for version, or ErrNotFound.
func (s *Store) AgentUpdate(ctx context.Context, agent, version string) (AgentUpdate, error) {
	u, err := scanAgentUpdate(s.db.QueryRowContext(ctx, `SELECT `+agentUpdateCols+`
		FROM agent_updates WHERE agent = $1 AND version = $2`, agent, version))
	if errors.Is(err, sql.ErrNoRows) {
		return u, fmt.Errorf("update of agent %s to %s: %w", agent, version, ErrNotFound)
	}
	return u, err
}

// ReleaseRemoval is what RemoveRelease removed.
type ReleaseRemoval struct {
	// Releases are the release rows removed, one per OS, architecture
	// and channel.
	Releases []Release
	// Blobs are the SHA-256s of the binaries removed with them, and
	// BlobBytes their size: a binary another release still refers to
	// stays.
	Blobs     []string
	BlobBytes int64
	// AgentUpdates is how many agents' update states were pruned
	// (PruneAgentUpdates).
	AgentUpdates int64
}

// RemoveRelease removes every release of version (each OS, architecture
// and channel), the binaries no other release refers to, and the agents'
// update states nothing needs any more (PruneAgentUpdates), in one
// transaction, and appends a ChangeRelease for the relays to drop their
// copies. It refuses with ErrInUse while the active rollout offers the
// version (whatever force), and, unless force, while an agent may still
// fetch it: offered it or downloading it since busySince. A version with
// no release is ErrNotFound.
func (s *Store) RemoveRelease(ctx context.Context, version string, busySince time.Time, force bool) (ReleaseRemoval, error) {
	var out ReleaseRemoval
	err := s.writeChanges(ctx, func(tx *sql.Tx) ([]Change, error) {
		out = ReleaseRemoval{}
		rows, err := tx.QueryContext(ctx, `SELECT `+releaseCols+` FROM releases WHERE version = $1 ORDER BY os, arch, channel`+s.d.lockRows(), version)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			r, err := scanRelease(rows)
			if err != nil {
				rows.Close()
				return nil, err
			}
			out.Releases = append(out.Releases, r)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
		if len(out.Releases) == 0 {
			return nil, fmt.Errorf("release %s: %w", version, ErrNotFound)
		}
		var ro int64
		switch err := tx.QueryRowContext(ctx, `SELECT id FROM rollouts WHERE version = $1 AND state = $2 ORDER BY id DESC LIMIT 1`, version, RolloutActive).Scan(&ro); {
		case err == nil:
			return nil, fmt.Errorf("release %s: rollout %d offers it (state %s): start a rollout of another version, which supersedes it, then remove the release: %w", version, ro, RolloutActive, ErrInUse)
		case !errors.Is(err, sql.ErrNoRows):
			return nil, err
		}
		if !force {
			busy, err := queryStrings(ctx, tx, `SELECT agent FROM agent_updates WHERE version = $1 AND state IN ('offered', 'downloading') AND updated_at >= $2 ORDER BY agent`, version, unix(busySince))
			if err != nil {
				return nil, err
			}
			if len(busy) > 0 {
				shown := busy[:min(len(busy), 5)]
				return nil, fmt.Errorf("release %s: %d agents were offered it or were downloading it since %s and may still fetch it (%s): wait, or force the removal (their download fails; an agent checks every file and keeps its binary): %w",
					version, len(busy), busySince.UTC().Format(time.RFC3339), strings.Join(shown, ", "), ErrInUse)
			}
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM releases WHERE version = $1`, version); err != nil {
			return nil, err
		}
		seen := map[string]bool{}
		for _, r := range out.Releases {
			sum := strings.ToLower(r.SHA256)
			if seen[sum] {
				continue
			}
			seen[sum] = true
			// Lock the blob first (as AddRelease does), then look for
			// releases referring to it: one being published with the same
			// binary is then either committed, and seen, or not yet past
			// its own look at the blob, which finds it gone and stores it
			// again.
			var part int
			if err := tx.QueryRowContext(ctx, `SELECT part FROM blobs WHERE sha256 = $1 AND part = 0`+s.d.lockRows(), sum).Scan(&part); err != nil && !errors.Is(err, sql.ErrNoRows) {
				return nil, err
			}
			shared, err := exists(ctx, tx, `SELECT count(*) FROM releases WHERE lower(sha256) = $1`, sum)
			if err != nil {
				return nil, err
			}
			if shared {
				continue
			}
			res, err := tx.ExecContext(ctx, `DELETE FROM blobs WHERE sha256 = $1`, sum)
			if err != nil {
				return nil, err
			}
			if n, err := affected(res); err != nil {
				return nil, err
			} else if n > 0 {
				out.Blobs = append(out.Blobs, sum)
				out.BlobBytes += r.Size
			}
		}
		if out.AgentUpdates, err = pruneAgentUpdates(ctx, tx); err != nil {
			return nil, err
		}
		return []Change{{Kind: ChangeRelease, Subject: version}}, nil
	})
	if err != nil {
		return ReleaseRemoval{}, err
	}
	return out, nil
}

// PruneAgentUpdates deletes the agents' update states of versions that no
// release and no active rollout has any more (their releases were
// removed, or an agent reported on a version never published), except
// each agent's newest state, which says where it stands: what release
// status and the dashboard show of it. It returns how many it deleted.
// The relay calls it at every housekeeping; RemoveRelease too.
func (s *Store) PruneAgentUpdates(ctx context.Context) (int64, error) {
	var n int64
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var err error
		n, err = pruneAgentUpdates(ctx, tx)
		return err
	})
	return n, err
}

func pruneAgentUpdates(ctx context.Context, tx *sql.Tx) (int64, error) {
	res, err := tx.ExecContext(ctx, `DELETE FROM agent_updates
		WHERE version NOT IN (SELECT version FROM releases)
			AND version NOT IN (SELECT version FROM rollouts WHERE state = $1)
			AND EXISTS (SELECT 1 FROM agent_updates n WHERE n.agent = agent_updates.agent
				AND (n.updated_at > agent_updates.updated_at OR (n.updated_at = agent_updates.updated_at AND n.version > agent_updates.version)))`, RolloutActive)
	if err != nil {
		return 0, err
	}
	return affected(res)
}

// ReleaseVersions returns the versions that have a release in the store.
func (s *Store) ReleaseVersions(ctx context.Context) ([]string, error) {
	return queryStrings(ctx, s.db, `SELECT DISTINCT version FROM releases ORDER BY version`)
}

// queryStrings returns the first column of the rows of query.
func queryStrings(ctx context.Context, q querier, query string, args ...any) ([]string, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}
