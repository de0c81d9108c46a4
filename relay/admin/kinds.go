package admin

import "github.com/tetherhq/tether/relay/internal/audit"

// Kinds of audit record about operators of the console, besides those of
// relay/internal/audit (audit.OperatorLogin and the like), and those of
// relay/internal/audit that callers outside relay/ look for.
const (
	// KindOperatorCertRevoke: an operator certificate was revoked.
	KindOperatorCertRevoke = "operator.certificate_revoke"
	// KindOperatorRefused: an authenticated operator was refused by its
	// scope (or role): detail says the method and path, and the status
	// answered.
	KindOperatorRefused = "operator.refused"
	// KindAuthRefused: failed or throttled authentication, summed per
	// door, source and reason (throttle.Summary): detail has the door,
	// source, reason, count, first and last, and up to five identities
	// claimed.
	KindAuthRefused = audit.AuthRefused
	// KindBackendCertRevoke: a backend's client certificate was revoked
	// (RevokeBackendCertificate: detail has its serial and not_after), or
	// its certificates not on record stopped being accepted
	// (RevokeUnrecordedBackendCertificates: detail has unrecorded true).
	KindBackendCertRevoke = audit.BackendCertRevoke
)
