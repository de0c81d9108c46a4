// Package restore handles the first start of a relay on a data directory
// restored from a backup (datadir.Backup): a step back in time.
//
// The restored store knows nothing of what happened after the backup was
// taken: agents revoked since would be accepted again, join tokens used
// since could enrol again, agents enrolled since are unknown, and
// certificates issued since (every renewal) are not the newest on record,
// so their agents would be refused as superseded. At the restored copy's
// first start, before any listener accepts, Handle:
//
//   - replays, from the relay's audit file (which is not part of a backup
//     and, kept from the directory being replaced, records what happened
//     since), the records written after the backup was taken: into the
//     store's audit trail, and those it can act on into the state —
//     tenants added, agents enrolled, certificates renewed, and every
//     revocation (agents, join tokens, backends and their certificates,
//     operator tokens and certificates); a record that does not hold
//     together (another tenant's agent, a renewal by a CA root the
//     backup does not have or expired when made, a date after the
//     restore) is skipped and reported;
//   - spends every join token of the backup that has uses left, since it
//     may have been used since (a token made since is not in the store);
//   - logs, as warnings, when the backup was taken, what it replayed, and
//     what it could not — anything whose secret the audit trail does not
//     hold (join tokens, backend keys and certificates, operator
//     credentials made since), limits and grants changed, a CA rotation —
//     for the operator to redo; and records it all in the audit trail;
//   - records the window between the backup and the restore
//     (store.AddRestoreWindow, beside earlier restores' windows whose
//     certificates may still live), in which certificates were issued
//     that the restored store does not know: an agent's newest of them,
//     newer than the one on record, is then accepted and recorded at its
//     handshake (policy.LostRenewal), so that agents that renewed since
//     the backup keep serving even without the audit file;
//   - marks the restore handled, in the restored store.
//
// An audit file that holds nothing after the backup (lost with the old
// directory) leaves the revocations since unknown: the warning says so
// and names what to revoke again by hand.
package restore

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/tetherhq/tether/relay/internal/audit"
	"github.com/tetherhq/tether/relay/internal/datadir"
	"github.com/tetherhq/tether/relay/internal/store"
)

// Kind is the kind of the audit record of a restore handled.
const Kind = "relay.restore" // admin.KindRestore

// kindOperatorCertRevoke is admin.KindOperatorCertRevoke (restore does
// not import the admin package for one name; a test holds them equal).
const kindOperatorCertRevoke = "operator.certificate_revoke"

// Config is Handle's.
type Config struct {
	Dir *datadir.Dir
	// AuditFile is the relay's audit file, read for what happened after
	// the backup.
	AuditFile string
	// Audit receives the record of the restore. Required.
	Audit *audit.Log
	// Logger receives the warnings; slog.Default() when nil.
	Logger *slog.Logger
	Now    func() time.Time
	// CertLifetime is how long the agent certificates the relay issues
	// live (24 hours when 0): the windows of earlier restores that ended
	// longer ago than that are dropped (store.AddRestoreWindow).
	CertLifetime time.Duration
}

// Report is what Handle did.
type Report struct {
	Backup datadir.BackupManifest
	// Imported counts the audit file's records after the backup that
	// were added to the store's audit trail; Malformed its lines that
	// could not be read, and those dated in the future (after the
	// restore, beyond maxSkew), which are neither imported nor applied.
	Imported, Malformed int
	// Gap reports an audit file whose first record is dated after the
	// backup: records between may be missing (a rotated file).
	Gap bool
	// Replayed lists what was applied to the restored state, one line
	// each ("agent.revoke acme/a1"); Unreplayable what happened since that
	// the operator must redo ("token.create acme token t1").
	Replayed, Unreplayable []string
	// Skipped lists the records that were not applied because they do
	// not hold together ("agent.renew acme/a1: ..."): a record naming an
	// agent of another tenant, a renewal by an unknown CA root or one
	// that expired before it was made. A damaged or planted line must
	// not re-point or revoke an agent.
	Skipped []string
	// SpentTokens are the backup's join tokens whose uses left were
	// taken.
	SpentTokens []store.Token
}

// maxSkew is how far in the future, past the restore, an audit record
// may be dated (clocks of hosts that wrote the file differ a little):
// one dated later is malformed.
const maxSkew = 5 * time.Minute

// maxLine bounds a line of the audit file; a longer one is skipped as
// malformed.
const maxLine = 1 << 20

// Handle handles the first start of a relay on a restored data directory
// (see the package comment). It reports handled false, doing nothing,
// for a data directory that was not restored or whose restore was
// handled. An error leaves the restore unhandled: the relay must not
// start.
func Handle(ctx context.Context, cfg Config) (r Report, handled bool, err error) {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	m, _, first, err := cfg.Dir.Restored(ctx)
	if err != nil || !first {
		return r, false, err
	}
	r.Backup = m
	st := cfg.Dir.Store
	acts, err := r.readAuditFile(ctx, st, cfg.AuditFile, m.TakenAt, now().Add(maxSkew))
	if err != nil {
		return r, false, err
	}
	roots := make(map[string]bool, len(m.CARoots))
	for _, id := range m.CARoots {
		roots[id] = true
	}
	for _, rec := range acts {
		if err := r.replay(ctx, st, rec, roots); err != nil {
			return r, false, fmt.Errorf("replay %s of %s from the audit file: %w", rec.Kind, rec.At.Format(time.RFC3339), err)
		}
	}
	if r.SpentTokens, err = st.SpendJoinTokens(ctx, m.TakenAt); err != nil {
		return r, false, fmt.Errorf("spend the backup's join tokens: %w", err)
	}
	spent := make([]string, len(r.SpentTokens))
	for i, t := range r.SpentTokens {
		spent[i] = t.Tenant + "/" + t.ID
	}
	log.Warn("this relay starts on a data directory restored from a backup: its state is as it was when the backup was taken, and what happened since is unknown to it except what its audit file recorded",
		"backup", m.ID, "taken_at", m.TakenAt.Format(time.RFC3339), "age", now().Sub(m.TakenAt).Round(time.Second).String(),
		"change_feed_at", m.Store.LatestChange, "audit_file", cfg.AuditFile, "audit_records_after_backup", r.Imported, "audit_lines_unreadable", r.Malformed)
	if len(r.Replayed) > 0 {
		log.Warn("restore: applied what the audit file recorded after the backup", "count", len(r.Replayed), "applied", r.Replayed)
	}
	if r.Imported == 0 {
		log.Warn("restore: the audit file records nothing after the backup (it was not kept from the directory replaced, or nothing happened): " +
			"agents revoked, backends removed, backend certificates and operator credentials revoked since the backup are accepted again. " +
			"Revoke them again now (tether-relay agent revoke, backend remove, backend revoke-certificate, operator token revoke, operator certificate revoke), " +
			"from the audit trail kept elsewhere (a copy of the audit file, a log collector); agents enrolled since are refused (unknown_agent) and enrol again with new join tokens " +
			"(agents that renewed their certificate since are accepted on it: see README, \"Backup and restore\")")
	}
	if r.Gap {
		log.Warn("restore: the audit file begins after the backup was taken: what happened between is missing from it (a log rotated since the backup?). " +
			"Revoke again by hand what was revoked in that time (see the checklist in README, \"Backup and restore\"), or stop the relay, put the rotated files that were removed back beside the audit file (under their rotated names), and restore again")
	}
	if len(r.Skipped) > 0 {
		log.Warn("restore: records in the audit file that do not hold together were not applied (a damaged or altered audit file?): check them against the trail kept elsewhere",
			"count", len(r.Skipped), "skipped", r.Skipped)
	}
	if len(r.Unreplayable) > 0 {
		log.Warn("restore: happened after the backup and could not be applied: redo what is still wanted", "count", len(r.Unreplayable), "not_applied", r.Unreplayable)
	}
	if len(spent) > 0 {
		log.Warn("restore: the backup's join tokens that had uses left are spent (they may have been used since the backup): create new ones for agents still to enrol",
			"count", len(spent), "tokens", spent)
	}
	detail := map[string]any{"backup": m.ID, "taken_at": m.TakenAt, "change_feed_at": m.Store.LatestChange, "audit_records_imported": r.Imported,
		"audit_lines_unreadable": r.Malformed, "audit_file_gap": r.Gap, "applied": nonNil(r.Replayed), "skipped": nonNil(r.Skipped), "not_applied": nonNil(r.Unreplayable), "tokens_spent": spent}
	cfg.Audit.Add(audit.Record{At: now(), Kind: Kind, Outcome: audit.OutcomeOK, Actor: "relay", Detail: detail})
	// Certificates issued from the backup until now are not on record:
	// the newest of an agent's is accepted once it is newer than the
	// newest on record (policy.LostRenewal). The windows of earlier
	// restores are kept while certificates issued in them may live.
	lifetime := cfg.CertLifetime
	if lifetime <= 0 {
		lifetime = 24 * time.Hour
	}
	at := now()
	if err := st.AddRestoreWindow(ctx, store.RestoreWindow{From: m.TakenAt, To: at}, at.Add(-lifetime)); err != nil {
		return r, false, fmt.Errorf("record the restore's window: %w", err)
	}
	if err := cfg.Dir.MarkRestored(ctx, m); err != nil {
		return r, false, fmt.Errorf("record that the restore was handled: %w", err)
	}
	return r, true, nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// readAuditFile adds the records of the audit trail's files dated after
// takenAt to the store's audit trail (once: records carry a key) and
// returns those Handle acts on (replay), oldest first. The files are the
// audit file at path and, before it, its rotated files (audit.Files),
// oldest first: a rotation since the backup moved the records written
// after it to them. A missing file holds nothing; lines that are not
// records, and records dated after latest, are counted and skipped.
func (r *Report) readAuditFile(ctx context.Context, st *store.Store, path string, takenAt, latest time.Time) ([]store.AuditRecord, error) {
	files, err := audit.Files(path)
	if err != nil {
		return nil, fmt.Errorf("read the audit file: %w", err)
	}
	var acts, batch []store.AuditRecord
	seenBefore := false
	// A file rotated before the backup holds records written before it
	// only: the files are read from the newest of those on (it may hold
	// a line an admin command appended as it was rotated), not from
	// every file kept, which may be many gigabytes.
	from := 0
	for i, name := range files {
		if at, ok := audit.ParseRotated(filepath.Base(path), filepath.Base(name)); ok && !at.After(takenAt) {
			from = i
		}
	}
	if from > 0 {
		seenBefore = true // the files passed over hold what came before
		files = files[from:]
	}
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		// The store orders the trail by its seq; the files' order (of
		// the writers' appends) is kept.
		if err := st.AddAudit(ctx, batch); err != nil {
			return fmt.Errorf("add the audit file's records to the store: %w", err)
		}
		r.Imported += len(batch)
		batch = batch[:0]
		return nil
	}
	read := func(name string) error {
		f, err := os.Open(name)
		if errors.Is(err, fs.ErrNotExist) {
			return nil // removed since it was listed
		}
		if err != nil {
			return fmt.Errorf("read the audit file: %w", err)
		}
		defer f.Close()
		br := bufio.NewReaderSize(f, 64<<10)
		for {
			line, err := readLine(br)
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				if errors.Is(err, errLongLine) {
					r.Malformed++
					continue
				}
				return fmt.Errorf("read the audit file %s: %w", name, err)
			}
			line = bytes.TrimSpace(line)
			if len(line) == 0 {
				continue
			}
			var rec store.AuditRecord
			if err := json.Unmarshal(line, &rec); err != nil || rec.Kind == "" || rec.At.IsZero() {
				r.Malformed++ // a line cut short by a crash, or not a record
				continue
			}
			if rec.At.After(latest) {
				r.Malformed++ // dated after the restore: not written by this relay before it
				continue
			}
			if !rec.At.After(takenAt) {
				seenBefore = true
				continue
			}
			rec.Seq = 0
			batch = append(batch, rec)
			if rec.Outcome == audit.OutcomeOK && acted(rec.Kind) {
				acts = append(acts, rec)
			}
			if len(batch) == 512 {
				if err := flush(); err != nil {
					return err
				}
			}
		}
	}
	for _, name := range files {
		if err := read(name); err != nil {
			return nil, err
		}
	}
	if err := flush(); err != nil {
		return nil, err
	}
	r.Gap = r.Imported > 0 && !seenBefore
	sort.SliceStable(acts, func(i, j int) bool { return acts[i].At.Before(acts[j].At) })
	return acts, nil
}

var errLongLine = errors.New("line too long")

// readLine reads a line of at most maxLine bytes; a longer one is
// consumed and reported as errLongLine.
func readLine(br *bufio.Reader) ([]byte, error) {
	var line []byte
	long := false
	for {
		chunk, err := br.ReadSlice('\n')
		if !long && len(line)+len(chunk) > maxLine {
			long, line = true, nil
		}
		if !long {
			line = append(line, chunk...)
		}
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case long && (err == nil || errors.Is(err, io.EOF)):
			return nil, errLongLine
		case errors.Is(err, io.EOF) && len(line) > 0:
			return line, nil
		}
		return line, err
	}
}

// acted reports whether Handle acts on records of kind: it applies them,
// or tells the operator to redo them.
func acted(kind string) bool {
	switch kind {
	case audit.TenantAdd, audit.Enrol, audit.Renew, audit.Revoke, audit.TokenRevoke, audit.BackendRemove, audit.BackendCertRevoke,
		audit.OperatorTokenRevoke, kindOperatorCertRevoke,
		audit.TokenCreate, audit.BackendAdd, audit.BackendGrant, audit.BackendUngrant, audit.BackendCert, audit.LimitsSet,
		audit.OperatorToken, audit.OperatorCert, audit.CARotate, audit.CARetire, audit.CARenewNow, audit.ReleasePublish, audit.ReleaseRollout, audit.RolloutHalt:
		return true
	}
	return false
}

// replay applies rec, a record of something done after the backup, to
// the restored state, or notes it for the operator. Applying is
// idempotent: what the backup holds already is left as it is.
//
// A record that names an agent is applied only to that agent of the
// tenant it names; a renewal only when its certificate comes from one of
// the backup's CA roots (roots) and expires after the renewal was made.
// Others are skipped (Report.Skipped).
func (r *Report) replay(ctx context.Context, st *store.Store, rec store.AuditRecord, roots map[string]bool) error {
	str := func(key string) string {
		s, _ := rec.Detail[key].(string)
		return s
	}
	applied := func(what string) { r.Replayed = append(r.Replayed, rec.Kind+" "+what) }
	redo := func(what string) { r.Unreplayable = append(r.Unreplayable, rec.Kind+" "+what) }
	skip := func(why string) {
		r.Skipped = append(r.Skipped, rec.Kind+" "+rec.Tenant+"/"+rec.Agent+" of "+rec.At.UTC().Format(time.RFC3339)+": "+why)
	}
	ignoreMissing := func(err error) error {
		if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrExists) {
			return nil
		}
		return err
	}
	switch rec.Kind {
	case audit.TenantAdd:
		if err := st.AddTenant(ctx, rec.Tenant, rec.At); err != nil {
			return ignoreMissing(err)
		}
		applied(rec.Tenant)
	case audit.Enrol:
		if rec.Agent == "" || rec.Tenant == "" {
			return nil
		}
		// The certificate it was issued is not in the record: the agent
		// is accepted on a valid certificate of the CA for its identity
		// until its next renewal records one (as an agent enrolled
		// before the relay recorded certificates).
		err := st.AddAgent(ctx, store.Agent{ID: rec.Agent, Tenant: rec.Tenant, Hostname: truncate(str("hostname"), 255), CreatedAt: rec.At})
		if err != nil {
			return ignoreMissing(err)
		}
		applied(rec.Tenant + "/" + rec.Agent)
	case audit.Renew:
		serial, root := str("cert_serial"), str("ca_root")
		notAfter, perr := time.Parse(time.RFC3339Nano, str("not_after"))
		if serial == "" || perr != nil {
			return nil
		}
		a, err := st.Agent(ctx, rec.Agent)
		if err != nil {
			return ignoreMissing(err)
		}
		switch {
		case a.Tenant != rec.Tenant:
			skip("agent " + a.ID + " is tenant " + a.Tenant + "'s")
			return nil
		case !roots[root]:
			skip("certificate " + serial + " from CA root " + root + ", not one of the backup's")
			return nil
		case !notAfter.After(rec.At):
			skip("certificate " + serial + " expired (" + notAfter.UTC().Format(time.RFC3339) + ") before it was issued")
			return nil
		}
		if a.CertSerial == serial || a.CertIssuedAt.After(rec.At) {
			return nil
		}
		err = st.RenewAgentCert(ctx, a.ID, a.CertSerial, store.AgentCert{Serial: serial, NotAfter: notAfter, Root: root, IssuedAt: rec.At}, "", time.Time{})
		if err != nil {
			return ignoreMissing(err)
		}
		applied(a.Tenant + "/" + a.ID + " certificate " + serial)
	case audit.Revoke:
		a, err := st.Agent(ctx, rec.Agent)
		if err != nil {
			return ignoreMissing(err)
		}
		if a.Tenant != rec.Tenant {
			skip("agent " + a.ID + " is tenant " + a.Tenant + "'s")
			return nil
		}
		if !a.RevokedAt.IsZero() {
			return nil
		}
		if _, err := st.RevokeAgent(ctx, a.ID, str("reason"), rec.At); err != nil {
			return err
		}
		applied(a.Tenant + "/" + a.ID)
	case audit.TokenRevoke:
		if _, err := st.DeleteToken(ctx, str("token")); err != nil {
			return ignoreMissing(err)
		}
		applied(rec.Tenant + "/" + str("token"))
	case audit.BackendRemove:
		if err := st.RemoveBackend(ctx, rec.Backend); err != nil {
			return ignoreMissing(err)
		}
		applied(rec.Backend)
	case audit.BackendCertRevoke:
		if unrecorded, _ := rec.Detail["unrecorded"].(bool); unrecorded {
			changed, err := st.RefuseUnrecordedBackendCerts(ctx, rec.Backend)
			if err != nil {
				return ignoreMissing(err)
			}
			if changed {
				applied(rec.Backend + " unrecorded certificates")
			}
			return nil
		}
		if _, err := st.RemoveBackendCert(ctx, rec.Backend, str("serial")); err != nil {
			return ignoreMissing(err)
		}
		applied(rec.Backend + " certificate " + str("serial"))
	case audit.OperatorTokenRevoke:
		t, err := st.OperatorToken(ctx, str("token"))
		if err != nil {
			return ignoreMissing(err)
		}
		if !t.RevokedAt.IsZero() {
			return nil
		}
		if _, err := st.RevokeOperatorToken(ctx, t.ID, rec.At); err != nil {
			return ignoreMissing(err)
		}
		applied(str("operator") + " token " + t.ID)
	case kindOperatorCertRevoke:
		c, err := st.OperatorCert(ctx, str("serial"))
		if err != nil {
			return ignoreMissing(err)
		}
		if !c.RevokedAt.IsZero() {
			return nil
		}
		if _, err := st.RevokeOperatorCert(ctx, c.Serial, rec.At); err != nil {
			return ignoreMissing(err)
		}
		applied(c.Name + " certificate " + c.Serial)

	// What the audit trail does not hold enough of to redo.
	case audit.TokenCreate:
		redo(rec.Tenant + " token " + str("token") + " (its secret is not recorded; create a new one)")
	case audit.BackendAdd:
		redo(rec.Backend + " (its key is not recorded: it is unknown now; add it again for a new key)")
	case audit.BackendGrant, audit.BackendUngrant:
		redo(rec.Backend + " " + fmt.Sprint(rec.Detail["grants"]))
	case audit.BackendCert:
		redo(rec.Backend + " certificate " + str("serial") + " (not recorded now: refused; issue a new one)")
	case audit.LimitsSet:
		redo(rec.Tenant + " (set the limits again)")
	case audit.OperatorToken:
		redo(str("operator") + " token " + str("token") + " (unknown now: refused; create a new one)")
	case audit.OperatorCert:
		redo(str("operator") + " certificate " + str("serial") + " (not recorded now: refused; issue a new one)")
	case audit.CARotate, audit.CARetire, audit.CARenewNow:
		redo(strings.TrimSpace(str("ca_root") + " (the restored CA is the backup's: agents whose certificates come from a root made since cannot connect and enrol again)"))
	case audit.ReleasePublish, audit.ReleaseRollout, audit.RolloutHalt:
		redo(fmt.Sprint(rec.Detail) + " (publish or roll out again)")
	}
	return nil
}

// truncate cuts s to at most n bytes.
func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
