package audit

// Kinds of audit record, every one the relay writes. A kind is a subject
// and what happened to it; ListAudit matches a prefix ending in "." (e.g.
// "agent.").
const (
	// Agents.
	Enrol      = "agent.enrol"
	Connect    = "agent.connect"   // refused connections (TLS or hello) and admitted ones
	Handshake  = "agent.handshake" // TLS handshakes that failed before an identity was known (a source's first; then AuthRefused)
	Renew      = "agent.renew"
	Revoke     = "agent.revoke"
	Disconnect = "agent.disconnect" // only when the relay ends the session for a reason worth auditing
	Drain      = "agent.drain"
	// StaleCertificate: an agent identity used a certificate other than
	// the newest the relay issued it (and the one just replaced, during
	// the short overlap of a renewal): at the handshake (one record per
	// refused connection) or for a renewal (summed per agent and
	// interval). Its key may have been copied.
	StaleCertificate = "agent.stale_certificate"
	// RestoredCertificate: an agent connected with a certificate the
	// relay issued between the backup its store was restored from and the
	// restore, which the restored store had lost: it is recorded as the
	// agent's newest (policy.LostRenewal).
	RestoredCertificate = "agent.restored_certificate"

	// Failed or throttled authentication, summed per door, source and
	// reason (throttle.Summary.Detail): the admin API and console, the
	// front doors, enrolment, and TLS handshakes refused for their client
	// certificate (agent port, CONNECT over TLS, relay-to-relay listener).
	AuthRefused = "auth.refused"

	// Tenants, join tokens and backends.
	TenantAdd   = "tenant.add"
	LimitsSet   = "tenant.limits"
	TokenCreate = "token.create"
	TokenRevoke = "token.revoke"
	// TokenPurge: the relay deleted join tokens that had expired or were
	// used up long enough ago (detail: tokens, their ids by tenant, and
	// retention).
	TokenPurge     = "token.purge"
	BackendAdd     = "backend.add"
	BackendGrant   = "backend.grant"
	BackendUngrant = "backend.ungrant"
	BackendCert    = "backend.certificate"
	// BackendCertRevoke: a backend's certificate was revoked (detail:
	// serial and not_after), or its certificates the relay has no record
	// of, issued before it recorded them, stopped being accepted (detail:
	// unrecorded true).
	BackendCertRevoke = "backend.certificate_revoke"
	BackendRemove     = "backend.remove"

	// Streams through the front doors, and their refusals.
	Stream = "stream"

	// The CA.
	CARotate   = "ca.rotate"
	CARetire   = "ca.retire"
	CARenewNow = "ca.renew_now"

	// Operators.
	OperatorToken       = "operator.token"
	OperatorTokenRevoke = "operator.token_revoke"
	OperatorCert        = "operator.certificate"
	OperatorLogin       = "operator.login"
	OperatorLogout      = "operator.logout"

	// The relays of a cluster.
	RelayRemove = "relay.remove"

	// Prune: a relay deleted the store's traffic records (Traffic)
	// older than its retention (detail: deleted, by kind; older_than;
	// retention). The audit file keeps them.
	Prune = "audit.prune"

	// Releases and self-update. The agent's own reports are recorded as
	// UpdatePrefix + its state: update.refused, update.downloaded,
	// update.applied, update.succeeded, update.rolled_back, update.failed.
	ReleasePublish = "release.publish"
	ReleaseRollout = "release.rollout"
	RolloutHalt    = "release.halt"
	// ReleaseRemove: a release was removed (detail: version, platforms,
	// blobs and bytes freed, agents' update states pruned, force).
	ReleaseRemove  = "release.remove"
	UpdateOffer    = "update.offer"
	UpdateDownload = "update.download"
	UpdatePrefix   = "update."
)

// OutcomeOK is the outcome of everything that succeeded; a refusal's
// outcome is its code (protocol.Code.String).
const OutcomeOK = "ok"

// OutcomeAbandoned is the outcome of a stream the agent opened (it dialled
// the service) that the relay never bridged: the client went away while
// the stream opened, or could not be told it was open.
const OutcomeAbandoned = "abandoned"

// Traffic are the kinds of record written per stream or per connection
// (or summed per source and interval, for refusals), whose number follows
// the traffic rather than what operators and agents change: the relay
// deletes them from the store once older than its traffic retention
// (relay.Config.AuditTrafficRetention). Every other kind — enrolments,
// renewals, revocations and the disconnects they cause, tokens, backends,
// limits, the CA, operators, releases — is kept for good.
//
// auth.refused is here although it may tell of an attack: it is summed
// per door, source, reason and interval, so its volume is what senders
// make it (one record per source per interval), and the retention an
// operator chooses for traffic (90 days recommended) is the time left to
// look into it; agent.disconnect is not (written for revocations and
// retired CA roots, as often as those happen).
var Traffic = []string{Stream, Connect, Handshake, AuthRefused}
