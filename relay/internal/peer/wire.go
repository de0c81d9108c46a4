package peer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/relay/internal/route"
)

// The relay-to-relay stream protocol. A link is TLS 1.3 over TCP (both
// ends present relay-to-relay certificates of the cluster's CA),
// multiplexed with yamux; each forwarded connection is one stream on it.
// The entry relay opens the stream and writes a request:
//
//	u8   version (1)
//	u8   tenant length (1..63)
//	     tenant (a DNS label)
//	     the stream header, as agents receive it (protocol.WriteStreamHeader)
//
// The holding relay answers, before any payload:
//
//	     a stream reply (protocol.WriteReply): ok, or the typed refusal
//	u8   agent id length (0..63; 0 unless ok)
//	     the id of the agent that took the stream
//
// then bytes flow both ways as on any tunnel stream. The holding relay
// opens the stream only on agents connected to it: a forwarded stream is
// never forwarded again. Its refusal is timeout when the tenant's agents
// connected to it stopped answering, so that the entry relay does not
// wait for them to move (a relay of an earlier version answers no_agent,
// and the entry relay then waits as for a leaving relay's agents).
//
// A relay may also ask another, on a stream of its own, whether it
// reaches the store (a relay that has lost its store asks before it
// sends its agents away: Links.StoreStatus):
//
//	u8   version (2)
//	u8   0 (reserved)
//
// answered with
//
//	     a stream reply (protocol.WriteReply): ok
//	u8   version (1)
//	u64  milliseconds since the relay last wrote its heartbeat to the
//	     store, big endian (all ones: it never has)
//
// A relay of an earlier version answers the request as a request of a
// version it does not know: a bad_request reply, taken as "does not say".
// A relay that cannot tell its heartbeat's age answers unavailable,
// taken the same way.

const (
	requestVersion = 1
	// statusVersion is the first byte of a store status request.
	statusVersion = 2
	// statusAnswerVersion is the first byte after the reply of its answer.
	statusAnswerVersion = 1
	// neverBeat is the age a relay that never wrote its heartbeat gives.
	neverBeat = ^uint64(0)
)

// request is what an entry relay asks of a holding relay: a stream to
// Tenant's service, or (Status) whether it reaches the store.
type request struct {
	Status bool
	Tenant string
	Header protocol.StreamHeader
}

// writeStatusRequest writes a store status request.
func writeStatusRequest(w io.Writer) error {
	_, err := w.Write([]byte{statusVersion, 0})
	return err
}

// writeStatusAnswer writes the answer to a store status request: this
// relay last wrote its heartbeat age ago (never when !beat). A negative
// age (a heartbeat time without a monotonic reading, and a wall clock
// that went back since) says nothing of how long ago it was: the answer
// is then a refusal, which the asker reads as "does not say", not as a
// heartbeat written just now.
func writeStatusAnswer(w io.Writer, age time.Duration, beat bool) error {
	if beat && age < 0 {
		return protocol.WriteReply(w, protocol.Reply{Code: protocol.CodeUnavailable,
			Message: "this relay cannot tell how long ago it wrote its heartbeat (its clock went back)"})
	}
	var b writeBuf
	if err := protocol.WriteReply(&b, protocol.Reply{}); err != nil {
		return err
	}
	ms := neverBeat
	if beat {
		ms = uint64(age.Milliseconds())
	}
	b = append(b, statusAnswerVersion)
	b = binary.BigEndian.AppendUint64(b, ms)
	_, err := w.Write(b)
	return err
}

// maxStatusAge is the longest age a status answer gives as such: longer
// ones (a relay that never wrote its heartbeat among them) read as never.
const maxStatusAge = 100 * 365 * 24 * time.Hour

// readStatusAnswer reads the answer to a store status request: known is
// false when the peer does not say (a relay of an earlier version
// refuses the request); beat is false when it says it never wrote its
// heartbeat, and age is then 0.
func readStatusAnswer(r io.Reader) (age time.Duration, beat, known bool, err error) {
	rep, err := protocol.ReadReply(r)
	if err != nil {
		return 0, false, false, err
	}
	if rep.Code != protocol.CodeOK {
		return 0, false, false, nil
	}
	var b [9]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return 0, false, false, fmt.Errorf("read relay-to-relay status answer: %w", err)
	}
	if b[0] != statusAnswerVersion {
		return 0, false, false, protocol.Errorf(protocol.CodeBadRequest, "relay-to-relay status answer: version %d", b[0])
	}
	ms := binary.BigEndian.Uint64(b[1:])
	if ms >= uint64(maxStatusAge.Milliseconds()) {
		return 0, false, true, nil
	}
	return time.Duration(ms) * time.Millisecond, true, true, nil
}

// writeRequest encodes q and writes it with a single Write.
func writeRequest(w io.Writer, q request, early route.Early) error {
	if q.Status {
		return writeStatusRequest(w)
	}
	if err := identity.ValidateName("tenant", q.Tenant); err != nil {
		return err
	}
	b := append(make([]byte, 0, 2+len(q.Tenant)+64), requestVersion, byte(len(q.Tenant)))
	b = append(b, q.Tenant...)
	b, err := q.Header.AppendBinary(b)
	if err != nil {
		return err
	}
	if early != nil {
		// The holding relay reads exactly the request: the client's
		// first bytes after it wait for the holder's agent to answer.
		return early.Attach(w, b)
	}
	_, err = w.Write(b)
	return err
}

// errBadRequest marks a request that does not parse.
var errBadRequest = errors.New("malformed relay-to-relay request")

// readRequest reads one request from r, consuming exactly its bytes.
func readRequest(r io.Reader) (request, error) {
	var pre [2]byte
	if _, err := io.ReadFull(r, pre[:]); err != nil {
		return request{}, fmt.Errorf("read relay-to-relay request: %w", err)
	}
	if pre[0] == statusVersion {
		if pre[1] != 0 {
			return request{}, protocol.Errorf(protocol.CodeBadRequest, "%v: status request with %d in its reserved byte", errBadRequest, pre[1])
		}
		return request{Status: true}, nil
	}
	if pre[0] != requestVersion {
		return request{}, protocol.Errorf(protocol.CodeBadRequest, "%v: version %d", errBadRequest, pre[0])
	}
	if pre[1] == 0 || pre[1] > 63 {
		return request{}, protocol.Errorf(protocol.CodeBadRequest, "%v: tenant of %d bytes", errBadRequest, pre[1])
	}
	tenant := make([]byte, pre[1])
	if _, err := io.ReadFull(r, tenant); err != nil {
		return request{}, fmt.Errorf("read relay-to-relay request: %w", err)
	}
	if err := identity.ValidateName("tenant", string(tenant)); err != nil {
		return request{}, protocol.Errorf(protocol.CodeBadRequest, "%v: %v", errBadRequest, err)
	}
	h, err := protocol.ReadStreamHeader(r)
	if err != nil {
		return request{}, err
	}
	return request{Tenant: string(tenant), Header: h}, nil
}

// writeAnswer writes the holding relay's answer: rep, and with an ok
// reply the agent that took the stream.
func writeAnswer(w io.Writer, rep protocol.Reply, agent string) error {
	if rep.Code != protocol.CodeOK {
		agent = ""
	}
	if len(agent) > 63 {
		return fmt.Errorf("agent id of %d bytes", len(agent))
	}
	// One Write: the reply and the agent id in one frame.
	var b writeBuf
	if err := protocol.WriteReply(&b, rep); err != nil {
		return err
	}
	b = append(b, byte(len(agent)))
	b = append(b, agent...)
	_, err := w.Write(b)
	return err
}

type writeBuf []byte

func (b *writeBuf) Write(p []byte) (int, error) { *b = append(*b, p...); return len(p), nil }

// readAnswer reads a holding relay's answer.
func readAnswer(r io.Reader) (protocol.Reply, string, error) {
	rep, err := protocol.ReadReply(r)
	if err != nil {
		return rep, "", err
	}
	var n [1]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return rep, "", fmt.Errorf("read relay-to-relay answer: %w", err)
	}
	if n[0] > 63 || (n[0] > 0 && rep.Code != protocol.CodeOK) {
		return rep, "", protocol.Errorf(protocol.CodeBadRequest, "relay-to-relay answer: agent id of %d bytes", n[0])
	}
	agent := make([]byte, n[0])
	if _, err := io.ReadFull(r, agent); err != nil {
		return rep, "", fmt.Errorf("read relay-to-relay answer: %w", err)
	}
	if n[0] > 0 {
		if err := identity.ValidateName("agent", string(agent)); err != nil {
			return rep, "", protocol.Errorf(protocol.CodeBadRequest, "relay-to-relay answer: %v", err)
		}
	}
	return rep, string(agent), nil
}
