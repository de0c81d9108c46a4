// Package protocol defines Tether's wire format: the handshake and control
// messages exchanged on an agent's control stream, the header that opens every
// tunnelled stream and the reply that answers it, the enrolment messages, the
// join-token format and the error codes shared by every part of the system.
//
// Everything here is pure encode/decode over io.Reader and io.Writer. Every
// decoder treats its input as hostile: lengths are bounded before anything is
// allocated, malformed input yields an error (never a panic), and unknown
// extension fields or message types are skipped so that old and new peers can
// coexist.
//
// # Versioning
//
// The TLS ALPN protocol name carries the major version ("tether/1"). Inside it,
// the Hello message carries a protocol version number and a list of
// capabilities; a relay accepts any version in [MinVersion, Version] and
// features are switched on by capability, never by comparing agent versions.
package protocol

// ALPN protocol identifiers. The relay's agent port speaks both; QUIC carries
// only ALPN.
const (
	// ALPN is negotiated by enrolled agents for tunnel sessions.
	ALPN = "tether/1"
	// ALPNEnroll is negotiated (over TLS on TCP) by agents that are enrolling
	// with a join token and have no certificate yet.
	ALPNEnroll = "tether-enroll/1"
)

// Protocol versions carried in Hello and Welcome.
const (
	// Version is the protocol version this code speaks.
	Version = 1
	// MinVersion is the oldest protocol version this code still accepts.
	MinVersion = 1
)

// Capabilities an agent advertises in its Hello (and, for CapRootBundle,
// its EnrollRequest) and a relay in its Welcome.
const (
	// CapHeartbeat: the agent answers Ping with Pong and sends its own Pings.
	CapHeartbeat = "heartbeat"
	// CapRenew: the relay renews the agent's certificate over the control
	// stream (RenewRequest/RenewResponse).
	CapRenew = "renew"
	// CapGoAway: the agent understands GoAway and drains the session.
	CapGoAway = "goaway"
	// CapRenewNow: the relay may send RenewNow on the control stream
	// (announced by relays in Welcome; agents that do not know it ignore
	// the message).
	CapRenewNow = "renew-now"
	// CapRootBundle, in an EnrollRequest: the agent trusts every root in
	// EnrollResponse.CACertificates, so the relay may issue its certificate
	// from a root other than the one the join token pinned (the new root
	// of a CA rotation). Agents that check endorsements trust such a root
	// only with its endorsement in EnrollResponse.CAEndorsements, which
	// relays that send endorsements always include.
	CapRootBundle = "root-bundle"
)
