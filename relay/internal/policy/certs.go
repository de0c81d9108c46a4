package policy

import (
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/relay/internal/store"
)

// CertStanding is how a certificate an agent presents stands against the
// store's record of the certificates the relay issued it. The relay
// accepts only an agent's newest certificate, and the one it replaced
// during the short overlap of a renewal (until the newest is first used,
// or a few minutes), so that a copy of an older key pair cannot keep
// serving, or renew itself, next to the agent.
type CertStanding int

// Standings.
const (
	// CertUnrecorded: the store records no certificate issued to the
	// agent (every one was issued before the relay recorded them): any
	// valid certificate is accepted until its next renewal records one.
	CertUnrecorded CertStanding = iota
	// CertNewest: the newest certificate the relay issued the agent.
	CertNewest
	// CertReplaced: the certificate the newest replaced, during the
	// overlap of that renewal (the agent may have stopped between
	// receiving the new one and installing it).
	CertReplaced
	// CertSuperseded: any other certificate of the agent: an older one, or
	// the replaced one after the overlap.
	CertSuperseded
)

// StandingOf is the standing at now of the certificate with serial
// (hexadecimal, as store.Agent.CertSerial) of agent a.
func StandingOf(a store.Agent, serial string, now time.Time) CertStanding {
	switch {
	case a.CertIssuedAt.IsZero():
		return CertUnrecorded
	case serial == a.CertSerial:
		return CertNewest
	case serial != "" && serial == a.PrevCertSerial && now.Before(a.PrevCertUntil):
		return CertReplaced
	}
	return CertSuperseded
}

// SupersededError is the refusal of a certificate with serial of agent a
// that is not its newest (StandingOf: CertSuperseded). The refusal names
// both certificates and says what to do: the agent itself holds only its
// newest (only an agent stopped between a renewal's answer and its
// installation for longer than the overlap holds an older one).
func SupersededError(a store.Agent, serial string) error {
	return protocol.Errorf(protocol.CodeCertSuperseded,
		"agent %s used certificate %s, which was replaced by certificate %s issued at %s: only an agent's newest certificate is accepted. "+
			"If the agent itself holds it, enrol it again with a new join token; otherwise its key pair was copied: revoke the agent",
		a.ID, serial, a.CertSerial, a.CertIssuedAt.UTC().Format(time.RFC3339))
}

// restoreSlack widens a restore window back from the backup's time, for
// a renewal issued just before the backup was taken and committed just
// after its copy of the store began.
const restoreSlack = time.Minute

// LostRenewal reports whether a certificate of agent a issued at issued,
// other than its newest on record (CertSuperseded), is one that a store
// restored from a backup lost: issued by the relay in a restore window
// (between a backup and its restore, ws: store.RestoreWindows) and newer
// than what the agent's record says it was issued before the restore.
// A store that was never restored always records the newest certificate
// issued, so none qualifies there; in a restored one, a renewal made
// after the backup does, and a copy of any certificate the restored store
// knows, or of one older than its newest, never does.
//
// Several certificates of one agent may have been issued in a window
// (each renewal), and the restored store knows none of them: only the
// newest was the agent's when the relay stopped, the older ones were
// refused then and are what a copy of the agent's key pair taken before
// its last renewal holds. So the relay keeps the newest certificate of a
// window it has accepted from the agent (a.WindowCertSerial, issued at
// a.WindowCertIssuedAt), and:
//
//   - a certificate of a window as old as it or older is refused: it was
//     superseded before the restore (WindowCertSuperseded says so);
//   - a newer one is accepted, even when the agent's newest on record is
//     a renewal made after the restore (issued after the window's end):
//     that renewal descends from a certificate older than this one, which
//     the relay should not have accepted, so a copy of an older key pair
//     that came first and renewed cannot keep the agent's own newest
//     certificate out.
//
// A certificate issued before the restore and recorded as the newest
// (the backup's, or a renewal the audit file brought back) is displaced
// only by a newer one.
func LostRenewal(a store.Agent, issued time.Time, ws []store.RestoreWindow) bool {
	if a.CertIssuedAt.IsZero() {
		return false
	}
	if !a.WindowCertIssuedAt.IsZero() && !issued.After(a.WindowCertIssuedAt) {
		return false
	}
	for _, w := range ws {
		if issued.After(w.From.Add(-restoreSlack)) && issued.Before(w.To) &&
			(issued.After(a.CertIssuedAt) || !a.CertIssuedAt.Before(w.To)) {
			return true
		}
	}
	return false
}

// InWindow reports whether a certificate issued at issued was issued in
// one of the restore windows ws.
func InWindow(issued time.Time, ws []store.RestoreWindow) bool {
	for _, w := range ws {
		if issued.After(w.From.Add(-restoreSlack)) && issued.Before(w.To) {
			return true
		}
	}
	return false
}

// WindowCertSuperseded is the refusal of a certificate with serial of
// agent a, issued at issued in a restore window, older than the newest
// certificate of a window the relay has accepted from the agent
// (a.WindowCertSerial): two certificates of the agent issued before the
// restore are in use, and the older one was superseded before it. Its
// key pair was probably copied.
func WindowCertSuperseded(a store.Agent, serial string, issued time.Time) error {
	return protocol.Errorf(protocol.CodeCertSuperseded,
		"agent %s used certificate %s, issued at %s, before the relay's store was restored from a backup; certificate %s, issued later (at %s), has been used by the agent since the restore: "+
			"two of the agent's certificates are in use, and the older one was superseded before the restore. Its key pair was probably copied: revoke the agent, and enrol it again with a new join token",
		a.ID, serial, issued.UTC().Format(time.RFC3339), a.WindowCertSerial, a.WindowCertIssuedAt.UTC().Format(time.RFC3339))
}
