// Package socks5 implements the server side of SOCKS5 (RFC 1928) CONNECT
// with mandatory username/password authentication (RFC 1929).
//
// Every byte from the client is treated as hostile. Each field is read with
// io.ReadFull into one fixed buffer sized by the RFCs' own limits (at most
// 255 bytes per field, 1032 bytes for a whole handshake), so
// nothing is ever allocated from an unchecked length. Handshake reads exactly
// the bytes of the handshake and no more: data a client pipelines after its
// request stays unread in the connection for the caller to splice.
//
// Neither Handshake nor WriteReply sets deadlines or closes the connection;
// the caller does both.
package socks5

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
)

// Address types (ATYP, RFC 1928 §5) as found in [Request.AddrType].
const (
	AddrTypeIPv4   byte = 0x01
	AddrTypeDomain byte = 0x03
	AddrTypeIPv6   byte = 0x04
)

// maxHandshakeLen is the most bytes Handshake reads from a client: a greeting
// offering 255 methods, 255-byte username and password, and a request for a
// 255-byte domain name.
const maxHandshakeLen = (2 + maxField) + (2 + maxField + 1 + maxField) + (4 + 1 + maxField + 2)

// maxHandshakeReplyLen is the most bytes Handshake writes to a client: a
// method selection, an authentication status and a refusal reply.
const maxHandshakeReplyLen = 2 + 2 + replyLenIPv4

const (
	version5     = 0x05
	authVersion  = 0x01 // RFC 1929 sub-negotiation version
	authSuccess  = 0x00
	authFailure  = 0x01 // any non-zero status is a failure; 0x01 is customary
	methodUser   = 0x02 // USERNAME/PASSWORD
	methodNone   = 0xFF // NO ACCEPTABLE METHODS
	cmdConnect   = 0x01
	maxField     = 255 // the largest length a one-byte length prefix allows
	replyLenIPv4 = 4 + 4 + 2
	replyLenIPv6 = 4 + 16 + 2
)

// Sentinel errors returned (wrapped) by Handshake. Inspect them with
// errors.Is.
var (
	// ErrBadVersion means a message carried a version other than 0x05
	// (SOCKS) or 0x01 (the username/password sub-negotiation).
	ErrBadVersion = errors.New("unsupported version")
	// ErrNoAcceptableMethod means the client did not offer
	// username/password authentication.
	ErrNoAcceptableMethod = errors.New("no acceptable authentication method")
	// ErrAuthFailed means the credentials were empty or rejected by the
	// auth callback.
	ErrAuthFailed = errors.New("authentication failed")
	// ErrCommandNotSupported means the client asked for a command other
	// than CONNECT (BIND, UDP ASSOCIATE or an unknown one).
	ErrCommandNotSupported = errors.New("command not supported")
	// ErrAddrTypeNotSupported means the request carried an address type
	// other than IPv4, domain name or IPv6.
	ErrAddrTypeNotSupported = errors.New("address type not supported")
	// ErrMalformed means a message was structurally invalid: a greeting
	// offering zero methods or a zero-length domain name.
	ErrMalformed = errors.New("malformed message")
)

// Request is what a client asked for after authenticating.
type Request struct {
	// Username and Password are the credentials the auth callback accepted.
	Username, Password string
	// Host is the domain name exactly as sent (ATYP 0x03; 1 to 255
	// arbitrary bytes, which the caller must validate) or, for the IPv4
	// and IPv6 address types, the IP address in textual form.
	Host string
	// Port is the destination port as sent; it may be 0.
	Port uint16
	// AddrType is the address type the client used: AddrTypeIPv4,
	// AddrTypeDomain or AddrTypeIPv6.
	AddrType byte
}

// ReplyCode is the REP field of a SOCKS5 reply (RFC 1928 §6).
type ReplyCode byte

// Reply codes defined by RFC 1928 §6.
const (
	ReplySucceeded            ReplyCode = 0x00
	ReplyGeneralFailure       ReplyCode = 0x01
	ReplyNotAllowed           ReplyCode = 0x02
	ReplyNetworkUnreachable   ReplyCode = 0x03
	ReplyHostUnreachable      ReplyCode = 0x04
	ReplyConnectionRefused    ReplyCode = 0x05
	ReplyTTLExpired           ReplyCode = 0x06
	ReplyCommandNotSupported  ReplyCode = 0x07
	ReplyAddrTypeNotSupported ReplyCode = 0x08
)

// String returns the RFC 1928 description of c.
func (c ReplyCode) String() string {
	switch c {
	case ReplySucceeded:
		return "succeeded"
	case ReplyGeneralFailure:
		return "general SOCKS server failure"
	case ReplyNotAllowed:
		return "connection not allowed by ruleset"
	case ReplyNetworkUnreachable:
		return "network unreachable"
	case ReplyHostUnreachable:
		return "host unreachable"
	case ReplyConnectionRefused:
		return "connection refused"
	case ReplyTTLExpired:
		return "TTL expired"
	case ReplyCommandNotSupported:
		return "command not supported"
	case ReplyAddrTypeNotSupported:
		return "address type not supported"
	}
	return fmt.Sprintf("unknown reply code %#02x", byte(c))
}

// Handshake runs the method negotiation, username/password authentication
// and request parsing of a SOCKS5 CONNECT on conn. The caller sets deadlines
// on conn, closes it, and on success answers with [WriteReply].
//
// The client must offer method 0x02 (username/password); otherwise Handshake
// replies 0xFF (no acceptable methods) and returns ErrNoAcceptableMethod.
// auth is called once with the credentials; if it returns false, if either
// credential is empty, or if auth is nil, Handshake writes the RFC 1929
// failure status (0x01) and returns ErrAuthFailed. A request for a command
// other than CONNECT is answered with ReplyCommandNotSupported and returns
// ErrCommandNotSupported; an unknown address type is answered with
// ReplyAddrTypeNotSupported and returns ErrAddrTypeNotSupported. A bad
// version returns ErrBadVersion: nothing is written for a greeting (the peer
// may not speak SOCKS5 at all), a failure status for the authentication
// message and ReplyGeneralFailure for the request. A zero-length domain
// name is answered with ReplyGeneralFailure and returns ErrMalformed.
//
// The reserved RSV byte of the request is ignored, whatever its value:
// RFC 1928 gives it no meaning and being strict would only turn away sloppy
// clients.
//
// Read errors are returned wrapped; io.EOF means the client closed the
// connection before sending anything, and a client that stops part way
// yields io.ErrUnexpectedEOF. Handshake reads at most 1032 bytes, never past
// the end of the request, and writes at most 14 bytes. Every error is returned with a nil Request.
func Handshake(conn io.ReadWriter, auth func(user, pass string) bool) (*Request, error) {
	var buf [maxField + 2]byte // largest read: a domain name and its port
	if err := negotiate(conn, buf[:]); err != nil {
		return nil, err
	}
	user, pass, err := authenticate(conn, buf[:], auth)
	if err != nil {
		return nil, err
	}
	req, err := readRequest(conn, buf[:])
	if err != nil {
		return nil, err
	}
	req.Username, req.Password = user, pass
	return req, nil
}

// negotiate reads the greeting (VER NMETHODS METHODS) and selects
// username/password authentication.
func negotiate(conn io.ReadWriter, buf []byte) error {
	if _, err := io.ReadFull(conn, buf[:2]); err != nil {
		return fmt.Errorf("read greeting: %w", err)
	}
	if buf[0] != version5 {
		return fmt.Errorf("greeting version %#02x: %w", buf[0], ErrBadVersion)
	}
	n := int(buf[1])
	if n == 0 {
		return refuse(conn, []byte{version5, methodNone}, fmt.Errorf("greeting offers zero methods: %w", ErrMalformed))
	}
	if err := readFull(conn, buf[:n]); err != nil {
		return fmt.Errorf("read greeting methods: %w", err)
	}
	if bytes.IndexByte(buf[:n], methodUser) < 0 {
		return refuse(conn, []byte{version5, methodNone}, fmt.Errorf("greeting lacks username/password: %w", ErrNoAcceptableMethod))
	}
	if _, err := conn.Write([]byte{version5, methodUser}); err != nil {
		return fmt.Errorf("write method selection: %w", err)
	}
	return nil
}

// authenticate reads the RFC 1929 request (VER ULEN UNAME PLEN PASSWD),
// checks it with auth and writes the status.
func authenticate(conn io.ReadWriter, buf []byte, auth func(user, pass string) bool) (user, pass string, err error) {
	failure := []byte{authVersion, authFailure}
	if err := readFull(conn, buf[:2]); err != nil {
		return "", "", fmt.Errorf("read authentication: %w", err)
	}
	if buf[0] != authVersion {
		return "", "", refuse(conn, failure, fmt.Errorf("authentication version %#02x: %w", buf[0], ErrBadVersion))
	}
	ulen := int(buf[1])
	if err := readFull(conn, buf[:ulen+1]); err != nil { // UNAME PLEN
		return "", "", fmt.Errorf("read username: %w", err)
	}
	user = string(buf[:ulen])
	plen := int(buf[ulen])
	if err := readFull(conn, buf[:plen]); err != nil {
		return "", "", fmt.Errorf("read password: %w", err)
	}
	pass = string(buf[:plen])
	switch {
	case user == "":
		return "", "", refuse(conn, failure, fmt.Errorf("empty username: %w", ErrAuthFailed))
	case pass == "":
		return "", "", refuse(conn, failure, fmt.Errorf("empty password: %w", ErrAuthFailed))
	case auth == nil || !auth(user, pass):
		// The username is left out on purpose: a client that swapped
		// the fields would put its API key in the logs.
		return "", "", refuse(conn, failure, fmt.Errorf("credentials rejected: %w", ErrAuthFailed))
	}
	if _, err := conn.Write([]byte{authVersion, authSuccess}); err != nil {
		return "", "", fmt.Errorf("write authentication status: %w", err)
	}
	return user, pass, nil
}

// readRequest reads VER CMD RSV ATYP DST.ADDR DST.PORT. The whole request
// is read before CMD is judged so that a refused client's bytes are not left
// unread, which would turn the caller's close into a reset that can destroy
// the reply in flight.
func readRequest(conn io.ReadWriter, buf []byte) (*Request, error) {
	if err := readFull(conn, buf[:4]); err != nil {
		return nil, fmt.Errorf("read request: %w", err)
	}
	ver, cmd, atyp := buf[0], buf[1], buf[3]
	if ver != version5 {
		return nil, refuseReply(conn, ReplyGeneralFailure, fmt.Errorf("request version %#02x: %w", ver, ErrBadVersion))
	}
	req := &Request{AddrType: atyp}
	var rest []byte // DST.ADDR without a length prefix, then DST.PORT
	switch atyp {
	case AddrTypeIPv4:
		rest = buf[:net.IPv4len+2]
	case AddrTypeIPv6:
		rest = buf[:net.IPv6len+2]
	case AddrTypeDomain:
		if err := readFull(conn, buf[:1]); err != nil {
			return nil, fmt.Errorf("read request domain length: %w", err)
		}
		rest = buf[:int(buf[0])+2]
	default:
		return nil, refuseReply(conn, ReplyAddrTypeNotSupported, fmt.Errorf("request address type %#02x: %w", atyp, ErrAddrTypeNotSupported))
	}
	if err := readFull(conn, rest); err != nil {
		return nil, fmt.Errorf("read request address: %w", err)
	}
	addr, port := rest[:len(rest)-2], rest[len(rest)-2:]
	req.Port = binary.BigEndian.Uint16(port)
	switch atyp {
	case AddrTypeIPv4:
		req.Host = netip.AddrFrom4([4]byte(addr)).String()
	case AddrTypeIPv6:
		req.Host = netip.AddrFrom16([16]byte(addr)).String()
	case AddrTypeDomain:
		if len(addr) == 0 {
			return nil, refuseReply(conn, ReplyGeneralFailure, fmt.Errorf("request with empty domain name: %w", ErrMalformed))
		}
		req.Host = string(addr)
	}
	if cmd != cmdConnect {
		return nil, refuseReply(conn, ReplyCommandNotSupported, fmt.Errorf("request command %#02x: %w", cmd, ErrCommandNotSupported))
	}
	return req, nil
}

// readFull is io.ReadFull for a read that is not the first of the
// handshake: running out of input there is always unexpected.
func readFull(r io.Reader, b []byte) error {
	_, err := io.ReadFull(r, b)
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// refuse writes msg and returns cause, joined with the write error if the
// write fails.
func refuse(w io.Writer, msg []byte, cause error) error {
	if _, err := w.Write(msg); err != nil {
		return errors.Join(cause, fmt.Errorf("write refusal: %w", err))
	}
	return cause
}

// refuseReply writes a reply with code and returns cause, joined with the
// write error if the write fails.
func refuseReply(w io.Writer, code ReplyCode, cause error) error {
	if err := WriteReply(w, code, nil); err != nil {
		return errors.Join(cause, err)
	}
	return cause
}

// WriteReply writes a SOCKS5 reply with the given code and bound address in
// a single Write. A nil bnd, or one with a nil IP, is sent as the IPv4
// address 0.0.0.0 (with bnd's port, if any); an IPv4 or IPv4-mapped address
// as IPv4, any other 16-byte address as IPv6. The zone is dropped. It
// returns an error without writing if bnd's port is outside 0–65535 or its
// IP has an invalid length.
func WriteReply(w io.Writer, code ReplyCode, bnd *net.TCPAddr) error {
	var ip net.IP
	port := 0
	if bnd != nil {
		ip, port = bnd.IP, bnd.Port
	}
	if port < 0 || port > 0xFFFF {
		return fmt.Errorf("write reply: bound port %d out of range", port)
	}
	var arr [replyLenIPv6]byte
	b := append(arr[:0], version5, byte(code), 0x00)
	switch ip4 := ip.To4(); {
	case len(ip) == 0:
		b = append(b, AddrTypeIPv4, 0, 0, 0, 0)
	case ip4 != nil:
		b = append(b, AddrTypeIPv4)
		b = append(b, ip4...)
	case len(ip) == net.IPv6len:
		b = append(b, AddrTypeIPv6)
		b = append(b, ip...)
	default:
		return fmt.Errorf("write reply: bound IP of invalid length %d", len(ip))
	}
	b = binary.BigEndian.AppendUint16(b, uint16(port))
	if _, err := w.Write(b); err != nil {
		return fmt.Errorf("write reply: %w", err)
	}
	return nil
}
