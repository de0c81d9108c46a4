package protocol

import (
	"strings"
	"unicode/utf8"
)

// MaxCloseReason bounds, in bytes, the reason CloseReason makes and the one
// ParseCloseReason reads. A QUIC CONNECTION_CLOSE frame has to fit in one
// packet with room to spare; the reason is a summary, the Reject on the
// control stream carries the whole message when it gets through.
const MaxCloseReason = 512

// CloseReason is the reason string a relay closes an agent's QUIC
// connection with (application error code CodeRefused of
// protocol/transport/quic) when it refuses the agent or ends its session
// for err: what a Reject for err says, so that the agent learns why from
// the close itself when the Reject written before it is lost with the
// connection. It is err's code name, then ": " and its message when there
// is one, as Error.Error prints it: an agent too old to parse it shows it
// as it is. The message is made valid UTF-8 and, when the whole would be
// longer than MaxCloseReason, cut at a rune boundary and marked "…".
// ParseCloseReason reads it back.
func CloseReason(err error) string {
	rep := ReplyFor(err)
	name := rep.Code.String()
	msg := strings.ToValidUTF8(rep.Message, "\uFFFD")
	if msg == "" {
		return name
	}
	if room := MaxCloseReason - len(name) - len(": "); len(msg) > room {
		msg = truncateUTF8(msg, room-len("…")) + "…"
	}
	return name + ": " + msg
}

// ParseCloseReason reads a reason that CloseReason made back into the
// refusal it carries, with its code and message. It reports false for any
// other text: one longer than MaxCloseReason or not valid UTF-8, or whose
// code name is not that of a refusal this version knows (a close of an
// older relay such as "relay busy", a hostile relay's text). A bare code
// name, as relays before CloseReason closed a refused hello with, is that
// refusal without a message.
func ParseCloseReason(s string) (*Error, bool) {
	if len(s) > MaxCloseReason || !utf8.ValidString(s) {
		return nil, false
	}
	name, msg, _ := strings.Cut(s, ": ")
	code, ok := ParseCode(name)
	if !ok || code == CodeOK {
		return nil, false
	}
	return &Error{Code: code, Message: msg}, true
}
