package peer

import (
	"errors"
	"fmt"
	"io"

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

const requestVersion = 1

// request is what an entry relay asks of a holding relay.
type request struct {
	Tenant string
	Header protocol.StreamHeader
}

// writeRequest encodes q and writes it with a single Write.
func writeRequest(w io.Writer, q request, early route.Early) error {
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
