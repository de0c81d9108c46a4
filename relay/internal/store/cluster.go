package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// The relays of a cluster. Each relay keeps a row of its own, heartbeat_ms
// set from the database's clock (so relays' clocks may disagree), and a
// presence row for each agent it holds sessions of. Both carry the relay's
// run epoch, which grows at every start (JoinCluster makes sure of it,
// whatever the clocks of the hosts it ran on): a reader counts a presence
// row only while its relay's row is alive and of the same epoch, so the
// rows of a relay that died or restarted stop counting without anyone
// deleting them, and a stale process of an earlier run cannot bring its
// rows back.

// ErrFenced is returned to a relay whose id a later run has taken.
var ErrFenced = errors.New("a later run of this relay id holds its row")

// Relay is one relay's row.
type Relay struct {
	ID        string
	Epoch     int64
	AgentAddr string // where agents reach it individually ("" if it does not say)
	PeerAddr  string // where peers reach it ("" if it takes no forwarded streams)
	Version   string
	StartedAt time.Time
	Draining  bool
	Agents    int   // distinct agents it holds
	Sessions  int   // agent sessions it holds
	Streams   int64 // streams open through it
	// Schema is the newest store schema version its binary knows (read
	// only: a relay writes its own binary's, BinarySchemaVersion); 0
	// when not known, for a binary from before schema 19.
	Schema int
	// Age is how long ago its last heartbeat was, by the database clock
	// (read only).
	Age time.Duration
}

// Alive reports whether r heartbeat within deadAfter.
func (r Relay) Alive(deadAfter time.Duration) bool { return r.Age < deadAfter }

// JoinCluster writes the row of a run of relay r.ID that starts now, with
// the database's time, and returns the run's epoch: r.Epoch, proposed by
// the relay (its start on its own clock), or one more than the row's
// epoch when that is not below it — an earlier run's, on a clock that was
// ahead of this one's (an NTP step, a VM restored or moved between
// hosts). Epochs of one relay id thus grow at every start, whatever the
// hosts' clocks, and the epoch is taken and the row written in one
// statement, so that two runs joining at once get two. A run that joins
// always takes the row: an earlier run still running (two processes
// under one id) is fenced at its next Heartbeat. Later heartbeats of the
// run give the epoch returned.
func (s *Store) JoinCluster(ctx context.Context, r Relay) (epoch int64, err error) {
	err = s.tx(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, fmt.Sprintf(`
INSERT INTO relays (id, epoch, agent_addr, peer_addr, version, started_at, heartbeat_ms, draining, agents, sessions, streams, schema_version, schema_of)
VALUES ($1, $2, $3, $4, $5, $6, %[1]s, $7, $8, $9, $10, $11, $5)
ON CONFLICT (id) DO UPDATE SET epoch = CASE WHEN relays.epoch >= excluded.epoch THEN relays.epoch + 1 ELSE excluded.epoch END,
	agent_addr = excluded.agent_addr, peer_addr = excluded.peer_addr,
	version = excluded.version, started_at = excluded.started_at, heartbeat_ms = %[1]s, draining = excluded.draining,
	agents = excluded.agents, sessions = excluded.sessions, streams = excluded.streams,
	schema_version = excluded.schema_version, schema_of = excluded.schema_of
RETURNING epoch`, s.d.nowMillis()),
			r.ID, r.Epoch, r.AgentAddr, r.PeerAddr, r.Version, unix(r.StartedAt), boolInt(r.Draining), r.Agents, r.Sessions, r.Streams, latestMigration()).Scan(&epoch)
	})
	return epoch, err
}

// Heartbeat writes r's row with the database's time, for a run that
// joined with epoch r.Epoch (JoinCluster). A row of a later epoch is left
// alone and ErrFenced returned: another process runs under this relay id.
// created reports that the run's row was not there, and was written
// anew: it was removed (an operator's RemoveRelay), lost (a failover to
// a replica that lacked it) or taken back from an earlier run; the
// presence rows of the run may be gone with it, and are to be written
// again.
func (s *Store) Heartbeat(ctx context.Context, r Relay) (created bool, err error) {
	args := []any{r.ID, r.Epoch, r.AgentAddr, r.PeerAddr, r.Version, unix(r.StartedAt), boolInt(r.Draining), r.Agents, r.Sessions, r.Streams, latestMigration()}
	err = s.tx(ctx, func(tx *sql.Tx) error {
		created = false
		// The run's own row, as at nearly every heartbeat.
		res, err := tx.ExecContext(ctx, fmt.Sprintf(`
UPDATE relays SET agent_addr = $3, peer_addr = $4, version = $5, started_at = $6, heartbeat_ms = %s, draining = $7,
	agents = $8, sessions = $9, streams = $10, schema_version = $11, schema_of = $5
WHERE id = $1 AND epoch = $2`, s.d.nowMillis()), args...)
		if err != nil {
			return err
		}
		if n, err := affected(res); err != nil || n == 1 {
			return err
		}
		// No row, or another run's.
		res, err = tx.ExecContext(ctx, fmt.Sprintf(`
INSERT INTO relays (id, epoch, agent_addr, peer_addr, version, started_at, heartbeat_ms, draining, agents, sessions, streams, schema_version, schema_of)
VALUES ($1, $2, $3, $4, $5, $6, %[1]s, $7, $8, $9, $10, $11, $5)
ON CONFLICT (id) DO UPDATE SET epoch = excluded.epoch, agent_addr = excluded.agent_addr, peer_addr = excluded.peer_addr,
	version = excluded.version, started_at = excluded.started_at, heartbeat_ms = %[1]s, draining = excluded.draining,
	agents = excluded.agents, sessions = excluded.sessions, streams = excluded.streams,
	schema_version = excluded.schema_version, schema_of = excluded.schema_of
WHERE relays.epoch <= excluded.epoch`, s.d.nowMillis()), args...)
		if err != nil {
			return err
		}
		n, err := affected(res)
		if err != nil {
			return err
		}
		if n == 0 {
			return ErrFenced
		}
		created = true
		return nil
	})
	return created, err
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Relays lists every relay's row, live or not, by id.
func (s *Store) Relays(ctx context.Context) ([]Relay, error) {
	rows, err := s.db.QueryContext(ctx, fmt.Sprintf(`
SELECT id, epoch, agent_addr, peer_addr, version, started_at, %s - heartbeat_ms, draining, agents, sessions, streams,
	CASE WHEN schema_of = version THEN schema_version ELSE 0 END
FROM relays ORDER BY id`, s.d.nowMillis()))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Relay
	for rows.Next() {
		var r Relay
		var started, ageMS int64
		var draining int
		if err := rows.Scan(&r.ID, &r.Epoch, &r.AgentAddr, &r.PeerAddr, &r.Version, &started, &ageMS, &draining, &r.Agents, &r.Sessions, &r.Streams, &r.Schema); err != nil {
			return nil, err
		}
		r.StartedAt, r.Draining, r.Age = fromUnix(started), draining != 0, time.Duration(max(ageMS, 0))*time.Millisecond
		out = append(out, r)
	}
	return out, rows.Err()
}

// Presence is how many sessions of one agent a relay holds.
type Presence struct {
	Tenant, Agent string
	Sessions      int // 0 removes the row
}

// SetPresence records the sessions relay id (of run epoch) holds of each
// agent in ps (for an agent named more than once, the last), in one
// transaction, with a statement for up to presenceBatch agents: the
// relays write the presence of all their agents again from time to time.
func (s *Store) SetPresence(ctx context.Context, id string, epoch int64, ps []Presence) error {
	if len(ps) == 0 {
		return nil
	}
	var gone []string
	var held []Presence
	for _, p := range lastOfEach(ps) {
		if p.Sessions <= 0 {
			gone = append(gone, p.Agent)
		} else {
			held = append(held, p)
		}
	}
	return s.tx(ctx, func(tx *sql.Tx) error {
		for batch := range slices.Chunk(gone, presenceBatch) {
			args := []any{id, epoch}
			marks := make([]string, len(batch))
			for i, agent := range batch {
				args = append(args, agent)
				marks[i] = fmt.Sprintf("$%d", len(args))
			}
			if _, err := tx.ExecContext(ctx, `DELETE FROM presence WHERE relay_id = $1 AND epoch = $2 AND agent IN (`+strings.Join(marks, ", ")+`)`, args...); err != nil {
				return err
			}
		}
		return s.insertPresence(ctx, tx, id, epoch, held, `DO UPDATE SET sessions = excluded.sessions, tenant = excluded.tenant`)
	})
}

// RestorePresence writes the presence rows of ps that are missing, for
// relay id of run epoch, and leaves those there as they are: a relay
// writes every agent it holds so from time to time, in case rows were
// lost (a failover to a replica that lacked the newest writes). Rows
// already there cost an index lookup each, and no write.
func (s *Store) RestorePresence(ctx context.Context, id string, epoch int64, ps []Presence) error {
	held := slices.DeleteFunc(lastOfEach(ps), func(p Presence) bool { return p.Sessions <= 0 })
	if len(held) == 0 {
		return nil
	}
	return s.tx(ctx, func(tx *sql.Tx) error {
		return s.insertPresence(ctx, tx, id, epoch, held, `DO NOTHING`)
	})
}

// PresentAgents lists the agents relay id's presence rows of run epoch
// name, by agent: what the store says the run holds, for the run to
// compare with what it does hold.
func (s *Store) PresentAgents(ctx context.Context, id string, epoch int64) ([]AgentKey, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT tenant, agent FROM presence WHERE relay_id = $1 AND epoch = $2 ORDER BY agent`, id, epoch)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []AgentKey
	for rows.Next() {
		var k AgentKey
		if err := rows.Scan(&k.Tenant, &k.Agent); err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	return out, rows.Err()
}

// lastOfEach is ps with each agent once, as last named (one statement
// may not write a row twice).
func lastOfEach(ps []Presence) []Presence {
	at := make(map[string]int, len(ps))
	var out []Presence
	for _, p := range ps {
		if i, ok := at[p.Agent]; ok {
			out[i] = p
			continue
		}
		at[p.Agent] = len(out)
		out = append(out, p)
	}
	return out
}

// insertPresence inserts the presence rows of held (each agent once),
// presenceBatch to a statement, doing onConflict (an ON CONFLICT action)
// where a row is there.
func (s *Store) insertPresence(ctx context.Context, tx *sql.Tx, id string, epoch int64, held []Presence, onConflict string) error {
	if len(held) == 0 {
		return nil
	}
	var now int64 // since_ms, by the database's clock
	if err := tx.QueryRowContext(ctx, `SELECT `+s.d.nowMillis()).Scan(&now); err != nil {
		return err
	}
	for batch := range slices.Chunk(held, presenceBatch) {
		args := []any{id, epoch, now}
		rows := make([]string, len(batch))
		for i, p := range batch {
			args = append(args, p.Tenant, p.Agent, p.Sessions)
			n := len(args)
			rows[i] = fmt.Sprintf("($1, $2, $%d, $%d, $%d, $3)", n-2, n-1, n)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO presence (relay_id, epoch, tenant, agent, sessions, since_ms) VALUES `+strings.Join(rows, ", ")+`
ON CONFLICT (relay_id, epoch, agent) `+onConflict, args...); err != nil {
			return err
		}
	}
	return nil
}

// presenceBatch is how many agents' presence one statement writes:
// 3 parameters each, well within both engines' bounds (32 766 and 65 535).
const presenceBatch = 500

// ClearPresence deletes relay id's presence rows of every epoch but keep
// (0: of every epoch): at start, what an earlier run left; at a clean
// stop, its own.
func (s *Store) ClearPresence(ctx context.Context, id string, keep int64) error {
	_, err := s.exec(ctx, `DELETE FROM presence WHERE relay_id = $1 AND epoch <> $2`, id, keep)
	return err
}

// livePresence is the join that counts a presence row: its relay's row is
// of the same epoch and heartbeat within $1 milliseconds.
func (s *Store) livePresence() string {
	return fmt.Sprintf(`presence p JOIN relays r ON r.id = p.relay_id AND r.epoch = p.epoch AND r.heartbeat_ms > %s - $1`, s.d.nowMillis())
}

// Holding is a live relay holding agents of a tenant.
type Holding struct {
	RelayID  string
	Epoch    int64 // the relay's run, which grows at every start
	PeerAddr string
	Draining bool
	Agents   int // the tenant's agents it holds
}

// TenantRelays lists the live relays (heartbeat within deadAfter) holding
// agents of tenant.
func (s *Store) TenantRelays(ctx context.Context, tenant string, deadAfter time.Duration) ([]Holding, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT r.id, r.epoch, r.peer_addr, r.draining, count(*) FROM `+s.livePresence()+`
WHERE p.tenant = $2 GROUP BY r.id, r.epoch, r.peer_addr, r.draining ORDER BY r.id`, deadAfter.Milliseconds(), tenant)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Holding
	for rows.Next() {
		var h Holding
		var draining int
		if err := rows.Scan(&h.RelayID, &h.Epoch, &h.PeerAddr, &draining, &h.Agents); err != nil {
			return nil, err
		}
		h.Draining = draining != 0
		out = append(out, h)
	}
	return out, rows.Err()
}

// AgentRelays maps each agent of tenant ("" for every tenant) held by a
// live relay to the ids of the relays holding it, sorted.
func (s *Store) AgentRelays(ctx context.Context, tenant string, deadAfter time.Duration) (map[AgentKey][]string, error) {
	q := `SELECT p.tenant, p.agent, r.id FROM ` + s.livePresence()
	args := []any{deadAfter.Milliseconds()}
	if tenant != "" {
		q += ` WHERE p.tenant = $2`
		args = append(args, tenant)
	}
	rows, err := s.db.QueryContext(ctx, q+` ORDER BY p.tenant, p.agent, r.id`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[AgentKey][]string{}
	for rows.Next() {
		var k AgentKey
		var relay string
		if err := rows.Scan(&k.Tenant, &k.Agent, &relay); err != nil {
			return nil, err
		}
		out[k] = append(out[k], relay)
	}
	return out, rows.Err()
}

// AgentKey names an agent of a tenant.
type AgentKey struct{ Tenant, Agent string }

// PruneRelays deletes presence rows that no longer count and whose relay
// has not heartbeat for olderThan, and relay rows silent for keepDead.
// Nothing depends on it: rows that do not count are ignored by readers.
func (s *Store) PruneRelays(ctx context.Context, olderThan, keepDead time.Duration) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		now := s.d.nowMillis()
		if _, err := tx.ExecContext(ctx, fmt.Sprintf(`DELETE FROM presence WHERE NOT EXISTS (
SELECT 1 FROM relays r WHERE r.id = presence.relay_id AND r.epoch = presence.epoch AND r.heartbeat_ms > %s - $1)`, now), olderThan.Milliseconds()); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, fmt.Sprintf(`DELETE FROM relays WHERE heartbeat_ms < %s - $1`, now), keepDead.Milliseconds())
		return err
	})
}

// RemoveRelay deletes relay id's row and presence: an operator's "forget
// this relay" (it may be running: it writes its row again at its next
// heartbeat).
func (s *Store) RemoveRelay(ctx context.Context, id string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM presence WHERE relay_id = $1`, id); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM relays WHERE id = $1`, id)
		if err != nil {
			return err
		}
		if n, _ := affected(res); n == 0 {
			return fmt.Errorf("relay %q: %w", strings.TrimSpace(id), ErrNotFound)
		}
		return nil
	})
}

// LeaveCluster marks relay id (of run epoch) as gone at once: draining,
// and silent since long ago, so that every reader counts neither it nor
// its presence rows from its next read. A later run writes its row again.
// A later run that already holds the id (this one was fenced: paused,
// then found its row taken) keeps its row and its presence rows: only
// this run's and earlier runs' are deleted.
func (s *Store) LeaveCluster(ctx context.Context, id string, epoch int64) error {
	_, err := s.exec(ctx, `UPDATE relays SET heartbeat_ms = 0, draining = 1, agents = 0, sessions = 0, streams = 0 WHERE id = $1 AND epoch = $2`, id, epoch)
	if err != nil {
		return err
	}
	_, err = s.exec(ctx, `DELETE FROM presence WHERE relay_id = $1 AND epoch <= $2`, id, epoch)
	return err
}
