package frontdoor

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/relay/internal/route"
)

// maxConnectHeader is the CONNECT front doors' limit on a request's line
// and headers (http.Server.MaxHeaderBytes).
const maxConnectHeader = 16 << 10

// connectTargetHint says what a CONNECT target must look like.
const connectTargetHint = "want CONNECT <service>.<tenant>" + route.TargetSuffix + ":<port> HTTP/1.1"

// frontListener admits CONNECT front-door connections within the bound per
// source and wraps each in a frontConn (a tlsFrontConn on the TLS door).
type frontListener struct {
	net.Listener
	fd       *Server
	tlsDoor  bool
	deadline time.Duration // bounds the TLS handshake (tlsFrontConn)
}

func (l frontListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		leave, ok := l.fd.src.Enter(c.RemoteAddr())
		if !ok {
			l.fd.SourceLimited.Add(1)
			l.fd.log.Debug("front-door connection closed: too many unauthenticated connections from its address or network", "remote", c.RemoteAddr().String())
			c.Close()
			continue
		}
		fc := &frontConn{Conn: c, leave: leave}
		if l.tlsDoor {
			return &tlsFrontConn{frontConn: fc, timeout: l.deadline}, nil
		}
		return fc, nil
	}
}

// frontConnKey finds a request's frontConn in its context
// (http.Server.ConnContext).
type frontConnKey struct{}

// withFrontConn is the CONNECT servers' ConnContext.
func withFrontConn(ctx context.Context, c net.Conn) context.Context {
	switch c := c.(type) {
	case *frontConn:
		return context.WithValue(ctx, frontConnKey{}, c)
	case *tlsFrontConn:
		return context.WithValue(ctx, frontConnKey{}, c.frontConn)
	}
	return ctx
}

// frontConnOf returns the frontConn a request arrived on, or nil.
func frontConnOf(ctx context.Context) *frontConn {
	fc, _ := ctx.Value(frontConnKey{}).(*frontConn)
	return fc
}

// frontConn is a CONNECT front-door connection. Until the handler has its
// request (served), it keeps the request line as read and turns a refusal
// net/http writes into a typed one.
type frontConn struct {
	net.Conn
	leave     func() // uncounts the connection from its source's bound; once
	served    atomic.Bool
	lineDone  atomic.Bool
	lineMu    sync.Mutex // guards line
	line      []byte     // the request line read so far, capped at maxConnectHeader
	leaveOnce sync.Once
}

// authenticated ends the connection's unauthenticated phase: it no longer
// counts against its source's bound.
func (c *frontConn) authenticated() { c.leaveOnce.Do(c.leave) }

// Close closes the connection, which no longer counts against its
// source's bound (net/http closes a connection it refused, or that sent
// nothing in time, without a handler ever seeing it).
func (c *frontConn) Close() error {
	c.authenticated()
	return c.Conn.Close()
}

// CloseWrite half-closes the connection (net/http does after refusing an
// over-long request, so that the client reads the answer before a reset).
func (c *frontConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// serve marks the request as the handler's: every answer from now on is
// the handler's own.
func (c *frontConn) serve() { c.served.Store(true) }

// unwrap returns the connection under c, for a hijacked connection: what
// is left of frontConn's work is done by then.
func (c *frontConn) unwrap() net.Conn { return c.Conn }

func (c *frontConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && !c.lineDone.Load() {
		c.keepLine(p[:n])
	}
	return n, err
}

// keepLine adds b, read from the connection, to the request line kept.
func (c *frontConn) keepLine(b []byte) {
	c.lineMu.Lock()
	defer c.lineMu.Unlock()
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		b = b[:i]
		c.lineDone.Store(true)
	}
	if room := maxConnectHeader - len(c.line); len(b) > room {
		b = b[:room]
		c.lineDone.Store(true)
	}
	c.line = append(c.line, b...)
}

// Write passes the handler's writes on. Before the handler has the
// request, anything written is net/http refusing it: that answer is
// replaced by a typed refusal saying what is wrong.
func (c *frontConn) Write(p []byte) (int, error) {
	if c.served.Load() || !bytes.HasPrefix(p, []byte("HTTP/1.")) {
		return c.Conn.Write(p)
	}
	err := protocol.Errorf(protocol.CodeBadRequest, "%s", c.malformed(p))
	resp := "HTTP/1.1 400 Bad Request\r\n" + HeaderError + ": " + protocol.CodeBadRequest.String() +
		"\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n" + err.Error() + "\n"
	if _, werr := io.WriteString(c.Conn, resp); werr != nil {
		return 0, werr
	}
	return len(p), nil
}

// malformed says what is wrong with the request net/http refused with
// resp: from the request line as read when that tells, else from
// net/http's own status line.
func (c *frontConn) malformed(resp []byte) string {
	c.lineMu.Lock()
	line := strings.TrimSuffix(string(c.line), "\r")
	c.lineMu.Unlock()
	status, _, _ := bytes.Cut(resp, []byte("\r\n"))
	switch {
	case bytes.HasPrefix(status, []byte("HTTP/1.1 431")):
		return fmt.Sprintf("request line and headers longer than %d KiB", maxConnectHeader>>10)
	case len(line) >= maxConnectHeader:
		return fmt.Sprintf("request line longer than %d KiB", maxConnectHeader>>10)
	}
	method, rest, ok1 := strings.Cut(line, " ")
	target, _, ok2 := strings.Cut(rest, " ")
	if ok1 && ok2 && method == "CONNECT" {
		var pe *protocol.Error
		if err := checkConnectTarget(target); errors.As(err, &pe) {
			return pe.Message
		}
	}
	if !ok1 || !ok2 {
		return fmt.Sprintf("malformed request line %s: %s", quoteClipped(line), connectTargetHint)
	}
	// Past the request line: a header (a malformed Host, say).
	if _, why, ok := bytes.Cut(status, []byte("Bad Request: ")); ok {
		return fmt.Sprintf("malformed request (%s): %s", why, connectTargetHint)
	}
	return "malformed request: " + connectTargetHint
}

// tlsFrontConn is a frontConn on the TLS door. net/http handshakes only a
// *tls.Conn itself; for any other connection it takes the TLS state from
// ConnectionState, once, before reading the request: the handshake is done
// there, within timeout.
type tlsFrontConn struct {
	*frontConn
	timeout time.Duration
}

// ConnectionState completes the TLS handshake (bounded by the front
// doors' handshake timeout) and returns its state; after a failed
// handshake the connection's reads fail and net/http drops it. A client
// that sent plain HTTP is told, as net/http would tell it.
func (c *tlsFrontConn) ConnectionState() tls.ConnectionState {
	tc := c.Conn.(*tls.Conn)
	tc.SetDeadline(time.Now().Add(c.timeout))
	err := tc.Handshake()
	tc.SetDeadline(time.Time{})
	if err != nil {
		var re tls.RecordHeaderError
		if errors.As(err, &re) && re.Conn != nil && looksLikeHTTP(re.RecordHeader) {
			re.Conn.SetWriteDeadline(time.Now().Add(c.timeout))
			io.WriteString(re.Conn, "HTTP/1.0 400 Bad Request\r\n"+HeaderError+": "+protocol.CodeBadRequest.String()+
				"\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"+
				protocol.Errorf(protocol.CodeBadRequest, "this front door speaks TLS: the client sent plain HTTP").Error()+"\n")
		}
		return tls.ConnectionState{}
	}
	return tc.ConnectionState()
}

// looksLikeHTTP reports whether the first bytes a TLS server read are an
// HTTP request's.
func looksLikeHTTP(hdr [5]byte) bool {
	switch string(hdr[:]) {
	case "CONNE", "GET /", "HEAD ", "POST ", "PUT /", "OPTIO":
		return true
	}
	return false
}

// checkConnectTarget checks the target of a CONNECT request (its
// authority-form, RFC 9110 §9.3.6: host and port, nothing else) before
// anything is done for it. Whether the host names a tenant service is
// ParseTarget's to say.
func checkConnectTarget(target string) error {
	bad := func(why string) error {
		return protocol.Errorf(protocol.CodeBadRequest, "malformed CONNECT target %s: %s; %s", quoteClipped(target), why, connectTargetHint)
	}
	if target == "" {
		return bad("empty")
	}
	for i := 0; i < len(target); i++ {
		if b := target[i]; b <= ' ' || b == 0x7f {
			return bad(fmt.Sprintf("control character or space %q at byte %d", b, i))
		}
	}
	if strings.ContainsAny(target, "/?#") {
		return bad("a URL or path, not host:port")
	}
	if strings.Contains(target, "@") {
		return bad("user information (user@host) is not allowed")
	}
	host, port, err := net.SplitHostPort(target)
	if err != nil {
		return bad("not host:port")
	}
	switch {
	case host == "":
		return bad("empty host")
	case len(host) > 253:
		return bad(fmt.Sprintf("host of %d bytes; a host name has at most 253", len(host)))
	}
	// Port 0 is allowed: the port is ignored (the agent's allowlist names
	// the service's address), and clients that have none send 0.
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return bad(fmt.Sprintf("port %s is not a number from 0 to 65535", quoteClipped(port)))
	}
	return nil
}

// quoteClipped quotes s for a one-line message, clipped to 64 bytes.
func quoteClipped(s string) string {
	if len(s) > 64 {
		return strconv.Quote(s[:64]) + "…"
	}
	return strconv.Quote(s)
}
