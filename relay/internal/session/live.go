// Package session serves agent connections: the agent listeners,
// admission of each handshake, one Conn per agent connection with its
// control loop, and the set of them.
package session

import (
	"time"

	"github.com/tetherhq/tether/protocol"
)

// LiveAgent is a snapshot of one connected agent session, for operators.
type LiveAgent struct {
	Tenant      string    `json:"tenant"`
	Agent       string    `json:"agent"`
	SessionID   string    `json:"session_id"`
	Transport   string    `json:"transport"`
	Remote      string    `json:"remote"`
	ConnectedAt time.Time `json:"connected_at"`
	// LastHeard is when the relay last heard from the agent on this session.
	LastHeard time.Time     `json:"last_heard"`
	RTT       time.Duration `json:"rtt_ns"` // last measured by the relay
	// StreamsOpen and StreamsTotal count this session's streams.
	StreamsOpen  int64  `json:"streams_open"`
	StreamsTotal uint64 `json:"streams_total"`
	Draining     bool   `json:"draining"`
	// CertNotAfter is when the session's newest certificate expires.
	CertNotAfter time.Time `json:"cert_not_after"`
	// Hello is what the agent said when it connected.
	Hello protocol.Hello `json:"hello"`
	// Report is the agent's latest report on this session; nil until the
	// first arrives. ReportAt is when it arrived.
	Report   *protocol.Report `json:"report,omitempty"`
	ReportAt time.Time        `json:"report_at,omitzero"`
	// DialFailedAt is when a report last showed the agent's count of
	// failed dials going up (the first report with failures counts).
	DialFailedAt time.Time `json:"dial_failed_at,omitzero"`
}
