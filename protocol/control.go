package protocol

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// MaxMessageSize bounds the payload of one control or enrolment message.
const MaxMessageSize = 64 << 10

// MessageType identifies a control or enrolment message on the wire.
type MessageType uint8

// Message types. Values are stable; a reader skips types it does not know.
const (
	TypeHello          MessageType = 1
	TypeWelcome        MessageType = 2
	TypeReject         MessageType = 3
	TypePing           MessageType = 4
	TypePong           MessageType = 5
	TypeGoAway         MessageType = 6
	TypeEnrollRequest  MessageType = 7
	TypeEnrollResponse MessageType = 8
	TypeRenewRequest   MessageType = 9
	TypeRenewResponse  MessageType = 10
	TypeRenewNow       MessageType = 11
	TypeReport         MessageType = 12
	TypeUpdateOffer    MessageType = 13 // see update.go
	TypeUpdateFetch    MessageType = 14
	TypeUpdateStatus   MessageType = 15
	TypeRelays         MessageType = 16 // see relays.go
	TypeUpdateCancel   MessageType = 17 // see update.go
)

// Message is one control or enrolment message.
//
// Frame format: u8 type, uvarint payload length (≤ MaxMessageSize), payload.
// The payload is a JSON object; readers ignore fields they do not know, so
// fields may be added without a version bump.
type Message interface {
	Type() MessageType
}

// Hello is the first message an agent sends on its control stream.
type Hello struct {
	ProtocolVersion int      `json:"protocol_version"`
	AgentVersion    string   `json:"agent_version"`
	OS              string   `json:"os"`
	Arch            string   `json:"arch"`
	Hostname        string   `json:"hostname,omitempty"`
	Capabilities    []string `json:"capabilities,omitempty"`
	// BootID is random per agent process. When a session arrives with a
	// new BootID, the relay drops the sessions of the agent's earlier
	// process at once instead of waiting for them to time out.
	BootID string `json:"boot_id,omitempty"`
	// Transport is what the agent dialled ("quic" or "tcp") and Why says why
	// (e.g. "configured", "fallback: quic handshake timed out"); a TCP
	// session through an HTTP proxy ends its Why with "; through HTTP
	// proxy host:port".
	Transport    string `json:"transport,omitempty"`
	TransportWhy string `json:"transport_why,omitempty"`
	// UpdateChannel is the release channel the agent follows (CapUpdate).
	UpdateChannel string `json:"update_channel,omitempty"`
}

// Welcome accepts a Hello.
type Welcome struct {
	ProtocolVersion int      `json:"protocol_version"`
	RelayVersion    string   `json:"relay_version"`
	AgentID         string   `json:"agent_id"`
	Tenant          string   `json:"tenant"`
	SessionID       string   `json:"session_id"`
	HeartbeatMillis int64    `json:"heartbeat_ms"`
	Capabilities    []string `json:"capabilities,omitempty"`
	// RelayID is the id of the relay that answered, as in the Relays
	// list (CapRelays): the agent learns which relay of the cluster it
	// reached through a shared name. Optional: relays that are not part
	// of a cluster may leave it out.
	RelayID string `json:"relay_id,omitempty"`
}

// MaxSessionIDLen bounds Welcome.SessionID. A relay names a session with
// 16 hex digits; the agent copies the id into its logs, its status and
// every line of its access log, so it takes no other.
const MaxSessionIDLen = 64

// ValidateSessionID checks the session id of a Welcome: 1 to
// MaxSessionIDLen letters, digits, '.', '_', '-' and ':'. An agent refuses
// a Welcome whose id is not: a relay could otherwise make the lines of the
// tenant's access log too long for its reader, or forge rows where the id
// is printed.
func ValidateSessionID(id string) error {
	if id == "" || len(id) > MaxSessionIDLen {
		return fmt.Errorf("session id of %d bytes: want 1 to %d", len(id), MaxSessionIDLen)
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !isAlnum(c) && c != '.' && c != '_' && c != '-' && c != ':' {
			return fmt.Errorf("session id %q: only letters, digits, '.', '_', '-' and ':'", id)
		}
	}
	return nil
}

// Reject refuses a Hello or an enrolment; the sender closes afterwards.
type Reject struct {
	Code    string `json:"code"` // a Code name
	Message string `json:"message"`
}

// Err converts a Reject into an *Error; unknown code names become
// CodeInternal with the name kept in the message.
func (r *Reject) Err() *Error {
	c, ok := ParseCode(r.Code)
	if !ok {
		return Errorf(CodeInternal, "%s: %s", r.Code, r.Message)
	}
	return &Error{Code: c, Message: r.Message}
}

// RejectFor builds a Reject from an error.
func RejectFor(err error) *Reject {
	rep := ReplyFor(err)
	return &Reject{Code: rep.Code.String(), Message: rep.Message}
}

// Ping asks the peer for a Pong with the same Seq; the sender measures RTT.
type Ping struct {
	Seq uint64 `json:"seq"`
}

// Pong answers a Ping.
type Pong struct {
	Seq uint64 `json:"seq"`
}

// GoAway tells the peer that this session takes no new streams: streams in
// flight finish, and the agent should connect again (possibly elsewhere).
type GoAway struct {
	Reason  string `json:"reason"` // one of the GoAway… reasons; others are taken as GoAwayShutdown
	Message string `json:"message,omitempty"`
	// DrainMillis is how long, from the sending of this GoAway, the sender
	// keeps the session's streams in flight open before it closes them (a
	// relay's drain timeout). It is a duration rather than a time so that
	// the two ends' clocks need not agree. Absent or 0: the sender does not
	// say, and the receiver drains by its own timeout. See DrainTimeout.
	DrainMillis int64 `json:"drain_ms,omitempty"`
}

// GoAway reasons.
const (
	// GoAwayShutdown: the sender is stopping (a relay: it closes the
	// session after DrainMillis; an agent: it is stopping).
	GoAwayShutdown = "shutdown"
	// GoAwayDrain (relay): an operator asked this agent's sessions to
	// reconnect.
	GoAwayDrain = "drain"
	// GoAwayLeaving (relay): this relay is leaving its cluster (it drains
	// to stop or upgrade) and wants the agent to hold its connections on
	// other relays. An agent that knows the reason first connects to
	// another relay of the cluster's list — never this one — and closes
	// this session only once that connection is up (or at DrainMillis);
	// streams in flight finish here meanwhile, until DrainMillis. Agents
	// that do not know the reason take it as GoAwayShutdown.
	GoAwayLeaving = "leaving"
	// GoAwayUpgrade (agent): this TCP fallback session is replaced by a
	// QUIC session to the same relay.
	GoAwayUpgrade = "upgrade"
	// GoAwayMoving (agent): the agent holds a new connection to another
	// relay of the cluster and leaves this one (this relay drains, has
	// left the list, or the agent had two connections to it while
	// another relay had none); streams in flight finish here.
	GoAwayMoving = "moving"
)

// MaxGoAwayDrain bounds the drain a GoAway can ask for: a receiver holds
// a session open no longer than this whatever the message says, so a
// corrupt or hostile value cannot keep an old session alive for days.
const MaxGoAwayDrain = time.Hour

// DrainTimeout is the drain the message asks for, at most MaxGoAwayDrain;
// 0 when it asks for none (DrainMillis absent, zero or negative).
func (g *GoAway) DrainTimeout() time.Duration {
	if g.DrainMillis <= 0 {
		return 0
	}
	if g.DrainMillis >= MaxGoAwayDrain.Milliseconds() {
		return MaxGoAwayDrain
	}
	return time.Duration(g.DrainMillis) * time.Millisecond
}

// EnrollRequest is sent by an agent on an ALPNEnroll connection.
type EnrollRequest struct {
	Token        string `json:"token"`
	CSR          []byte `json:"csr"` // DER PKCS#10
	Hostname     string `json:"hostname,omitempty"`
	OS           string `json:"os,omitempty"`
	Arch         string `json:"arch,omitempty"`
	AgentVersion string `json:"agent_version,omitempty"`
	// Capabilities of the enrolling agent (CapRootBundle).
	Capabilities []string `json:"capabilities,omitempty"`
}

// EnrollResponse carries the agent's new identity.
type EnrollResponse struct {
	AgentID     string `json:"agent_id"`
	Tenant      string `json:"tenant"`
	TrustDomain string `json:"trust_domain"`
	// Certificate is the agent's certificate chain, PEM.
	Certificate string `json:"certificate"`
	// CACertificates are the roots the agent must trust for the relay, PEM;
	// during a CA rotation both the old and the new root. An agent that
	// announced CapRootBundle may receive a certificate issued by any of
	// them; others receive one from the root their join token pinned.
	CACertificates string `json:"ca_certificates"`
	// CAEndorsements are the endorsements of the roots in CACertificates,
	// PEM: for each root made by a CA rotation, its certificate issued by
	// the root before it. An agent accepts a root it does not trust yet
	// only with an endorsement from one it trusts. Agents from before
	// endorsements ignore it.
	CAEndorsements string `json:"ca_endorsements,omitempty"`
}

// RenewRequest asks the relay, on an established control stream, for a new
// certificate for the same identity and a fresh key (CapRenew). The
// identity is the session's: nothing in the CSR chooses it.
type RenewRequest struct {
	CSR []byte `json:"csr"` // DER PKCS#10, signed by the new key
}

// RenewResponse answers a RenewRequest: a certificate, or a refusal code and
// message. A refusal does not end the session.
type RenewResponse struct {
	// Certificate is the new certificate chain, PEM.
	Certificate string `json:"certificate,omitempty"`
	// CACertificates are every root the agent should trust for the relay,
	// PEM; during a CA rotation both the old and the new root.
	CACertificates string `json:"ca_certificates,omitempty"`
	// CAEndorsements, PEM, as in EnrollResponse: what makes a root of
	// CACertificates that the agent does not trust yet acceptable to it.
	CAEndorsements string `json:"ca_endorsements,omitempty"`
	Code           string `json:"code,omitempty"` // a Code name when refused
	Message        string `json:"message,omitempty"`
}

// Err returns the refusal carried by r, or nil.
func (r *RenewResponse) Err() error {
	if r.Code == "" || r.Code == CodeOK.String() {
		return nil
	}
	return (&Reject{Code: r.Code, Message: r.Message}).Err()
}

// RenewNow asks an agent, on its control stream, to renew its certificate
// now rather than when two thirds of its life have passed: the relay's CA
// has a new root and the operator wants agents moved to it at once. The
// agent first waits a random time of up to SpreadMillis, so that a fleet
// does not renew in one burst, and does nothing if its certificate already
// comes from Root. Agents that do not know this message ignore it and
// renew on schedule.
type RenewNow struct {
	// Root is the printable fingerprint ("sha256:<hex>") of the root the
	// relay now issues certificates from.
	Root         string `json:"root,omitempty"`
	SpreadMillis int64  `json:"spread_ms,omitempty"`
}

// Report is the agent's account of itself, sent on its control stream
// after the Welcome and then periodically and whenever something in it
// changes. The relay keeps the latest per agent session for operators. It
// is informational: nothing in it is trusted for identity or policy, and
// the relay bounds what it keeps (see the relay's report handling).
type Report struct {
	AgentVersion string `json:"agent_version"`
	OS           string `json:"os"`
	Arch         string `json:"arch"`
	Hostname     string `json:"hostname,omitempty"`
	// StartedAt is when the agent process started, Unix milliseconds.
	StartedAt int64 `json:"started_ms"`
	// Transport in use on this session ("quic" or "tcp") and why.
	Transport    string `json:"transport"`
	TransportWhy string `json:"transport_why,omitempty"`
	// RTTMicros is the agent's last measured round trip to this relay.
	RTTMicros int64 `json:"rtt_us,omitempty"`
	// Streams open now and opened since the agent started, over all its
	// sessions, and bytes copied each way since it started.
	StreamsOpen  int64  `json:"streams_open"`
	StreamsTotal uint64 `json:"streams_total"`
	BytesIn      uint64 `json:"bytes_in"`  // service to backend
	BytesOut     uint64 `json:"bytes_out"` // backend to service
	// DialFailures counts failed dials to each configured service since
	// the agent started; LastDialError is the most recent failure's text.
	DialFailures  map[string]uint64 `json:"dial_failures,omitempty"`
	LastDialError string            `json:"last_dial_error,omitempty"`
	// CertNotAfter is when the agent's certificate expires, Unix milliseconds.
	CertNotAfter int64 `json:"cert_not_after_ms,omitempty"`
	// ConfigHash identifies the service configuration in force (hex
	// HMAC-SHA256 of its canonical form, under a key the agent keeps to
	// itself: it changes when the configuration does, and tells the relay
	// nothing else); ConfigError is the last reload error, empty when the
	// file on disk is the one in force.
	ConfigHash  string `json:"config_hash,omitempty"`
	ConfigError string `json:"config_error,omitempty"`
	// Services are the service names the agent's config allows.
	Services []string `json:"services,omitempty"`
	// AccessLogError says why the agent's access log (the tenant's own
	// record of the streams it serves) cannot be written now; empty when
	// it can, or when the agent keeps none. Optional: a relay that does
	// not know it ignores it.
	AccessLogError string `json:"access_log_error,omitempty"`
	// Relays are the relays the agent holds a connection to now, one per
	// connection slot that is connected (at most 16), in slot order.
	// Optional: a relay that does not know it ignores it.
	Relays []HeldRelay `json:"relays,omitempty"`
}

// HeldRelay is one of an agent's connections in a Report.
type HeldRelay struct {
	// ID is the relay's id from its Welcome; empty when it sent none.
	ID string `json:"id,omitempty"`
	// Addr is the address the agent dialled: the relay's advertised
	// address, or a configured one (possibly a name shared by several
	// relays).
	Addr string `json:"addr"`
}

// DialFailuresTotal is the sum of DialFailures over every service.
func (r *Report) DialFailuresTotal() uint64 {
	var n uint64
	for _, v := range r.DialFailures {
		n += v
	}
	return n
}

// Unknown is a message of a type this version does not know. Readers return
// it rather than failing so that a newer peer can send new messages.
type Unknown struct {
	MessageType MessageType
	Payload     []byte
}

func (*Hello) Type() MessageType          { return TypeHello }
func (*Welcome) Type() MessageType        { return TypeWelcome }
func (*Reject) Type() MessageType         { return TypeReject }
func (*Ping) Type() MessageType           { return TypePing }
func (*Pong) Type() MessageType           { return TypePong }
func (*GoAway) Type() MessageType         { return TypeGoAway }
func (*EnrollRequest) Type() MessageType  { return TypeEnrollRequest }
func (*EnrollResponse) Type() MessageType { return TypeEnrollResponse }
func (*RenewRequest) Type() MessageType   { return TypeRenewRequest }
func (*RenewResponse) Type() MessageType  { return TypeRenewResponse }
func (*RenewNow) Type() MessageType       { return TypeRenewNow }
func (*Report) Type() MessageType         { return TypeReport }
func (*Relays) Type() MessageType         { return TypeRelays }
func (u *Unknown) Type() MessageType      { return u.MessageType }

func newMessage(t MessageType) Message {
	switch t {
	case TypeHello:
		return new(Hello)
	case TypeWelcome:
		return new(Welcome)
	case TypeReject:
		return new(Reject)
	case TypePing:
		return new(Ping)
	case TypePong:
		return new(Pong)
	case TypeGoAway:
		return new(GoAway)
	case TypeEnrollRequest:
		return new(EnrollRequest)
	case TypeEnrollResponse:
		return new(EnrollResponse)
	case TypeRenewRequest:
		return new(RenewRequest)
	case TypeRenewResponse:
		return new(RenewResponse)
	case TypeRenewNow:
		return new(RenewNow)
	case TypeReport:
		return new(Report)
	case TypeUpdateOffer:
		return new(UpdateOffer)
	case TypeUpdateFetch:
		return new(UpdateFetch)
	case TypeUpdateStatus:
		return new(UpdateStatus)
	case TypeRelays:
		return new(Relays)
	case TypeUpdateCancel:
		return new(UpdateCancel)
	}
	return nil
}

// validator is a message with rules beyond its JSON shape (Relays):
// AppendMessage refuses to encode one that breaks them and DecodeMessage
// to decode it.
type validator interface {
	Validate() error
}

// AppendMessage appends the framed encoding of m to b.
func AppendMessage(b []byte, m Message) ([]byte, error) {
	var payload []byte
	if u, ok := m.(*Unknown); ok {
		payload = u.Payload
	} else {
		if v, ok := m.(validator); ok {
			if err := v.Validate(); err != nil {
				return b, fmt.Errorf("encode message %d: %w", m.Type(), err)
			}
		}
		var err error
		if payload, err = json.Marshal(m); err != nil {
			return b, fmt.Errorf("encode message %d: %w", m.Type(), err)
		}
	}
	if len(payload) > MaxMessageSize {
		return b, fmt.Errorf("encode message %d: %d bytes exceeds %d", m.Type(), len(payload), MaxMessageSize)
	}
	b = append(b, byte(m.Type()))
	b = binary.AppendUvarint(b, uint64(len(payload)))
	return append(b, payload...), nil
}

// WriteMessage writes m with a single Write. Callers that share a writer
// between goroutines must serialise calls.
func WriteMessage(w io.Writer, m Message) error {
	b, err := AppendMessage(nil, m)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// ErrMessageTooLarge is returned when a frame announces a payload larger than
// MaxMessageSize.
var ErrMessageTooLarge = errors.New("message too large")

// ReadMessage reads one framed message. A message of an unknown type comes
// back as *Unknown. io.EOF is returned only at a clean frame boundary. An
// error that matches ErrBadRequest is a frame read whole whose payload
// does not decode or breaks the message's rules: r is at the next frame,
// so a receiver may skip the message and read on.
func ReadMessage(r *bufio.Reader) (Message, error) {
	tb, err := r.ReadByte()
	if err != nil {
		return nil, err // io.EOF at a frame boundary is a clean end
	}
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, fmt.Errorf("read message length: %w", noEOF(err))
	}
	if n > MaxMessageSize {
		return nil, fmt.Errorf("message type %d: %w (%d bytes, limit %d)", tb, ErrMessageTooLarge, n, MaxMessageSize)
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		return nil, fmt.Errorf("read message payload: %w", noEOF(err))
	}
	return DecodeMessage(MessageType(tb), payload)
}

// DecodeMessage decodes the payload of a message of type t.
func DecodeMessage(t MessageType, payload []byte) (Message, error) {
	m := newMessage(t)
	if m == nil {
		return &Unknown{MessageType: t, Payload: payload}, nil
	}
	if err := json.Unmarshal(payload, m); err != nil {
		return nil, Errorf(CodeBadRequest, "decode message type %d: %v", t, err)
	}
	if v, ok := m.(validator); ok {
		if err := v.Validate(); err != nil {
			return nil, Errorf(CodeBadRequest, "decode message type %d: %v", t, err)
		}
	}
	return m, nil
}

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
