package protocol

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// Limits on the stream header and reply. They bound what a decoder allocates.
const (
	MaxServiceLen   = 63   // a DNS label
	MaxBackendLen   = 255  // an identity such as "backend:billing"
	MaxRequestIDLen = 64   // printable ASCII request id (see ValidRequestID)
	MaxHeaderBody   = 4096 // whole header body including extensions
	MaxReplyMessage = 1024 // human-readable reply text, in bytes
)

const (
	streamHeaderVersion = 1
	replyVersion        = 1
)

// StreamHeader is the first thing the relay writes on every stream it opens
// to an agent. The agent answers with a Reply before any payload flows.
//
// Wire format (all lengths bounded, see the Max… constants):
//
//	u8   version (1)
//	u16  body length, big endian
//	body:
//	  uvarint len, service bytes
//	  uvarint len, backend identity bytes
//	  uvarint len, request id bytes
//	  zero or more extensions: uvarint tag, uvarint len, bytes
//
// Extensions with tags the reader does not know are skipped, so a newer relay
// can add fields without breaking older agents.
type StreamHeader struct {
	Service   string // service name in the agent's allowlist
	Backend   string // authenticated identity of the caller, e.g. "backend:billing"
	RequestID string // correlates logs on relay and agent
}

var (
	errHeaderVersion = errors.New("unsupported stream header version")
	errTruncated     = errors.New("truncated field")
)

// Validate reports whether h can be encoded.
func (h StreamHeader) Validate() error {
	if h.Service == "" {
		return Errorf(CodeBadRequest, "stream header: empty service name")
	}
	if len(h.Service) > MaxServiceLen {
		return Errorf(CodeBadRequest, "stream header: service name longer than %d bytes", MaxServiceLen)
	}
	if len(h.Backend) > MaxBackendLen {
		return Errorf(CodeBadRequest, "stream header: backend identity longer than %d bytes", MaxBackendLen)
	}
	if len(h.RequestID) > MaxRequestIDLen {
		return Errorf(CodeBadRequest, "stream header: request id longer than %d bytes", MaxRequestIDLen)
	}
	// The decoder refuses fields that are not UTF-8, so never send one.
	if !utf8.ValidString(h.Service) || !utf8.ValidString(h.Backend) || !utf8.ValidString(h.RequestID) {
		return Errorf(CodeBadRequest, "stream header: field is not UTF-8")
	}
	if !ValidRequestID(h.RequestID) {
		return Errorf(CodeBadRequest, "stream header: request id is not printable ASCII")
	}
	return nil
}

// ValidRequestID reports whether id is printable ASCII without spaces
// (relays send 16 hex digits), or empty. The agent writes it in its access
// log and prints it in tables: a decoder refuses any other.
func ValidRequestID(id string) bool {
	for i := 0; i < len(id); i++ {
		if id[i] <= ' ' || id[i] > '~' {
			return false
		}
	}
	return true
}

// AppendBinary appends the encoded header to b.
func (h StreamHeader) AppendBinary(b []byte) ([]byte, error) {
	if err := h.Validate(); err != nil {
		return b, err
	}
	start := len(b)
	b = append(b, streamHeaderVersion, 0, 0)
	b = appendString(b, h.Service)
	b = appendString(b, h.Backend)
	b = appendString(b, h.RequestID)
	binary.BigEndian.PutUint16(b[start+1:], uint16(len(b)-start-3))
	return b, nil
}

// WriteStreamHeader encodes h and writes it with a single Write.
func WriteStreamHeader(w io.Writer, h StreamHeader) error {
	// The buffer escapes to the heap through w.Write, so it is sized for
	// this header (each length fits a two-byte uvarint once h is valid)
	// rather than for the largest one.
	b, err := h.AppendBinary(make([]byte, 0, 3+3*2+len(h.Service)+len(h.Backend)+len(h.RequestID)))
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// ReadStreamHeader reads one header from r. It reads exactly the header's
// bytes, so the payload that follows stays in r.
func ReadStreamHeader(r io.Reader) (StreamHeader, error) {
	var pre [3]byte
	if _, err := io.ReadFull(r, pre[:]); err != nil {
		return StreamHeader{}, fmt.Errorf("read stream header: %w", err)
	}
	if pre[0] != streamHeaderVersion {
		return StreamHeader{}, Errorf(CodeBadRequest, "stream header: %v %d", errHeaderVersion, pre[0])
	}
	n := int(binary.BigEndian.Uint16(pre[1:]))
	if n > MaxHeaderBody {
		return StreamHeader{}, Errorf(CodeBadRequest, "stream header: body of %d bytes exceeds %d", n, MaxHeaderBody)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return StreamHeader{}, fmt.Errorf("read stream header body: %w", noEOF(err))
	}
	return ParseStreamHeaderBody(body)
}

// ParseStreamHeaderBody decodes the body of a stream header (everything after
// the version byte and the length).
func ParseStreamHeaderBody(body []byte) (StreamHeader, error) {
	var h StreamHeader
	var err error
	fail := func(what string, err error) (StreamHeader, error) {
		return StreamHeader{}, Errorf(CodeBadRequest, "stream header: %s: %v", what, err)
	}
	if h.Service, body, err = readString(body, MaxServiceLen); err != nil {
		return fail("service", err)
	}
	if h.Backend, body, err = readString(body, MaxBackendLen); err != nil {
		return fail("backend", err)
	}
	if h.RequestID, body, err = readString(body, MaxRequestIDLen); err != nil {
		return fail("request id", err)
	}
	if !ValidRequestID(h.RequestID) {
		return fail("request id", errors.New("not printable ASCII"))
	}
	for len(body) > 0 { // extensions: skip the ones we do not know (all of them, today)
		var tag uint64
		var n int
		if tag, n = binary.Uvarint(body); n <= 0 {
			return fail("extension tag", errTruncated)
		}
		body = body[n:]
		if _, body, err = readBytes(body, MaxHeaderBody); err != nil {
			return fail(fmt.Sprintf("extension %d", tag), err)
		}
	}
	if h.Service == "" {
		return fail("service", errors.New("empty"))
	}
	return h, nil
}

// Reply answers a StreamHeader. Code OK means the agent connected to the
// service and payload follows; any other code is a refusal and the stream ends.
//
// Wire format:
//
//	u8   version (1)
//	u8   code
//	u16  message length, big endian (≤ MaxReplyMessage)
//	     message bytes (UTF-8)
type Reply struct {
	Code    Code
	Message string
}

// Err returns nil for an OK reply and an *Error otherwise.
func (r Reply) Err() error {
	if r.Code == CodeOK {
		return nil
	}
	return &Error{Code: r.Code, Message: r.Message}
}

// ReplyFor turns an error into a Reply: nil is OK, an *Error keeps its code,
// anything else becomes CodeInternal.
func ReplyFor(err error) Reply {
	if err == nil {
		return Reply{}
	}
	var pe *Error
	if errors.As(err, &pe) {
		return Reply{Code: pe.Code, Message: pe.Message}
	}
	return Reply{Code: CodeInternal, Message: err.Error()}
}

// WriteReply encodes r and writes it with a single Write. Invalid UTF-8 in
// the message is replaced with U+FFFD, and a message longer than
// MaxReplyMessage is truncated at a rune boundary.
func WriteReply(w io.Writer, r Reply) error {
	msg := truncateUTF8(strings.ToValidUTF8(r.Message, "\uFFFD"), MaxReplyMessage)
	b := make([]byte, 4, 4+len(msg))
	b[0], b[1] = replyVersion, byte(r.Code)
	binary.BigEndian.PutUint16(b[2:], uint16(len(msg)))
	b = append(b, msg...)
	_, err := w.Write(b)
	return err
}

// ReadReply reads one Reply from r, consuming exactly its bytes.
func ReadReply(r io.Reader) (Reply, error) {
	var pre [4]byte
	if _, err := io.ReadFull(r, pre[:]); err != nil {
		return Reply{}, fmt.Errorf("read stream reply: %w", err)
	}
	if pre[0] != replyVersion {
		return Reply{}, Errorf(CodeBadRequest, "stream reply: unsupported version %d", pre[0])
	}
	n := int(binary.BigEndian.Uint16(pre[2:]))
	if n > MaxReplyMessage {
		return Reply{}, Errorf(CodeBadRequest, "stream reply: message of %d bytes exceeds %d", n, MaxReplyMessage)
	}
	msg := make([]byte, n)
	if _, err := io.ReadFull(r, msg); err != nil {
		return Reply{}, fmt.Errorf("read stream reply message: %w", noEOF(err))
	}
	if !utf8.Valid(msg) {
		return Reply{}, Errorf(CodeBadRequest, "stream reply: message is not UTF-8")
	}
	return Reply{Code: Code(pre[1]), Message: string(msg)}, nil
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func readBytes(b []byte, max int) (field, rest []byte, err error) {
	n, k := binary.Uvarint(b)
	if k <= 0 {
		return nil, nil, errTruncated
	}
	b = b[k:]
	if n > uint64(max) {
		return nil, nil, fmt.Errorf("length %d exceeds %d", n, max)
	}
	if n > uint64(len(b)) {
		return nil, nil, errTruncated
	}
	return b[:n], b[n:], nil
}

func readString(b []byte, max int) (string, []byte, error) {
	f, rest, err := readBytes(b, max)
	if err != nil {
		return "", nil, err
	}
	if !utf8.Valid(f) {
		return "", nil, errors.New("not UTF-8")
	}
	return string(f), rest, nil
}

func truncateUTF8(s string, max int) string {
	if len(s) <= max {
		return s
	}
	s = s[:max]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}
