package relay

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/transport"
	"github.com/tetherhq/tether/relay/internal/socks5"
)

// Front-door HTTP headers carrying a refusal's code and the request id.
const (
	HeaderError     = "Tether-Error"
	HeaderRequestID = "Tether-Request-Id"
)

func (r *Relay) acceptSOCKS(ctx context.Context, wg *sync.WaitGroup) error {
	for {
		c, err := r.socksLn.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("accept SOCKS5 connection: %w", err)
		}
		leave, ok := r.frontSrc.enter(c.RemoteAddr())
		if !ok {
			r.frontSourceLimited.Add(1)
			r.log.Debug("front-door connection closed: too many unauthenticated connections from its address or network", "door", "socks5", "remote", c.RemoteAddr().String())
			c.Close()
			continue
		}
		r.front.add(c)
		wg.Go(func() {
			defer r.front.remove(c)
			r.serveSOCKS(ctx, c, leave)
		})
	}
}

// serveSOCKS serves one SOCKS5 connection; authenticated is called once
// the handshake is over (it uncounts the connection from its source's
// bound on unauthenticated connections).
func (r *Relay) serveSOCKS(ctx context.Context, c net.Conn, authenticated func()) {
	// Per-stream attributes are passed to each log call rather than bound
	// with Logger.With, which formats them up front: on the stream-open
	// path that cost more than the log lines ever written.
	attrs := []any{"door", "socks5", "remote", c.RemoteAddr().String()}
	c.SetDeadline(time.Now().Add(r.cfg.HandshakeTimeout))
	var who *caller
	var authErr error
	var claimed string
	req, err := socks5.Handshake(c, func(user, pass string) bool {
		claimed = user
		who, authErr = r.authenticate(ctx, user, pass)
		return authErr == nil
	})
	authenticated()
	if err != nil {
		if authErr != nil {
			r.log.Info("refused", with(attrs, "code", protocol.CodeOf(authErr).String(), "err", authErr)...)
			r.auditUnauthenticated("socks5", c.RemoteAddr().String(), claimed, authErr)
		} else {
			r.log.Debug("SOCKS5 handshake failed", with(attrs, "err", err)...)
		}
		c.Close()
		return
	}
	attrs = with(attrs, "backend", who.name, "target", req.Host)
	// The handshake is over. Its deadline must not reach into the stream
	// open, which may take up to StreamOpenTimeout (longer than the
	// handshake's): the reply, refusal or success, is written afterwards
	// with a deadline of its own.
	c.SetDeadline(time.Time{})
	target := net.JoinHostPort(req.Host, fmt.Sprint(req.Port))
	tun, err := r.dial(ctx, who, target)
	c.SetWriteDeadline(time.Now().Add(r.cfg.HandshakeTimeout))
	if err != nil {
		r.log.Info("refused", with(targetAttrs(attrs, target), "code", protocol.CodeOf(err).String(), "err", err)...)
		socks5.WriteReply(c, socksReply(protocol.CodeOf(err)), nil)
		c.Close()
		r.auditRefusal("socks5", c.RemoteAddr().String(), who, target, err)
		return
	}
	if err := socks5.WriteReply(c, socks5.ReplySucceeded, nil); err != nil {
		tun.abandon()
		c.Close()
		return
	}
	c.SetDeadline(time.Time{})
	r.bridge(c.(transport.Stream), tun, with(attrs, "tenant", tun.target.Tenant, "service", tun.target.Service))
}

// socksReply maps a refusal to the closest SOCKS5 reply code. SOCKS5 cannot
// carry a message; the relay logs it with the request id.
func socksReply(c protocol.Code) socks5.ReplyCode {
	switch c {
	case protocol.CodeOK:
		return socks5.ReplySucceeded
	case protocol.CodeNotAllowed, protocol.CodeUnauthenticated:
		return socks5.ReplyNotAllowed
	case protocol.CodeUnknownTenant, protocol.CodeUnknownService, protocol.CodeBadRequest:
		return socks5.ReplyHostUnreachable
	case protocol.CodeNoAgent, protocol.CodeUnavailable:
		return socks5.ReplyNetworkUnreachable
	case protocol.CodeTargetUnreachable:
		return socks5.ReplyConnectionRefused
	case protocol.CodeTimeout:
		return socks5.ReplyTTLExpired
	}
	return socks5.ReplyGeneralFailure
}

// HTTPStatus maps a refusal code to the HTTP status the CONNECT front door
// answers with.
func HTTPStatus(c protocol.Code) int {
	switch c {
	case protocol.CodeOK:
		return http.StatusOK
	case protocol.CodeUnauthenticated:
		return http.StatusProxyAuthRequired
	case protocol.CodeNotAllowed:
		return http.StatusForbidden
	case protocol.CodeUnknownTenant, protocol.CodeUnknownService:
		return http.StatusNotFound
	case protocol.CodeBadRequest:
		return http.StatusBadRequest
	case protocol.CodeNoAgent, protocol.CodeUnavailable:
		return http.StatusServiceUnavailable
	case protocol.CodeTargetUnreachable:
		return http.StatusBadGateway
	case protocol.CodeTimeout:
		return http.StatusGatewayTimeout
	case protocol.CodeLimitExceeded:
		return http.StatusTooManyRequests
	}
	return http.StatusInternalServerError
}

func (r *Relay) connectServer(ctx context.Context) *http.Server {
	return &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) { r.serveCONNECT(ctx, w, req) }),
		ReadHeaderTimeout: r.cfg.HandshakeTimeout,
		IdleTimeout:       r.cfg.HandshakeTimeout,
		MaxHeaderBytes:    maxConnectHeader,
		ErrorLog:          slog.NewLogLogger(r.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ConnContext:       withFrontConn,
	}
}

func (r *Relay) serveCONNECT(ctx context.Context, w http.ResponseWriter, req *http.Request) {
	attrs := []any{"door", "connect", "remote", req.RemoteAddr}
	fc := frontConnOf(req.Context())
	if fc != nil {
		fc.serve()
		defer fc.authenticated()
	}
	if req.Method != http.MethodConnect {
		w.Header().Set("Allow", http.MethodConnect)
		writeRefusal(w, "", protocol.Errorf(protocol.CodeBadRequest, "this is a CONNECT proxy: use CONNECT <service>.<tenant>.tether:<port>"), http.StatusMethodNotAllowed)
		return
	}
	door := "connect"
	if req.TLS != nil {
		door = "connect-tls"
		attrs[1] = door
	}
	// Malformed before anything else: net/http lets through targets that
	// are not host:port (user@host, an empty or over-long host).
	if err := checkConnectTarget(req.RequestURI); err != nil {
		r.log.Info("refused", with(attrs, "code", protocol.CodeOf(err).String(), "err", err)...)
		writeRefusal(w, "", err, 0)
		return
	}
	who, claimed, err := r.authenticateRequest(ctx, req)
	if fc != nil {
		fc.authenticated()
	}
	if err != nil {
		r.log.Info("refused", with(attrs, "code", protocol.CodeOf(err).String(), "err", err)...)
		r.auditUnauthenticated(door, req.RemoteAddr, claimed, err)
		writeRefusal(w, "", err, 0)
		return
	}
	attrs = with(attrs, "backend", who.name, "target", req.Host)
	tun, err := r.dial(ctx, who, req.Host)
	if err != nil {
		r.log.Info("refused", with(targetAttrs(attrs, req.Host), "code", protocol.CodeOf(err).String(), "err", err)...)
		r.auditRefusal(door, req.RemoteAddr, who, req.Host, err)
		writeRefusal(w, "", err, 0)
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		tun.abandon()
		r.log.Error("hijack CONNECT connection", with(attrs, "err", err)...)
		return
	}
	if u, ok := conn.(interface{ unwrap() net.Conn }); ok {
		conn = u.unwrap() // the frontConn's work is done
	}
	r.front.add(conn)
	defer r.front.remove(conn)
	conn.SetDeadline(time.Time{})
	if _, err := io.WriteString(conn, "HTTP/1.1 200 Connection established\r\n"+HeaderRequestID+": "+tun.requestID+"\r\n\r\n"); err != nil {
		tun.abandon()
		conn.Close()
		return
	}
	front, ok := conn.(transport.Stream)
	if !ok {
		tun.abandon()
		conn.Close()
		r.log.Error("CONNECT connection cannot half-close", with(attrs, "type", fmt.Sprintf("%T", conn))...)
		return
	}
	if n := brw.Reader.Buffered(); n > 0 { // bytes the client sent right after its request
		front = &prefixedStream{Stream: front, r: io.MultiReader(io.LimitReader(brw.Reader, int64(n)), front)}
	}
	r.bridge(front, tun, with(attrs, "tenant", tun.target.Tenant, "service", tun.target.Service))
}

// writeRefusal answers a CONNECT request with the status for err's code,
// the code in the Tether-Error header and the message in the body.
func writeRefusal(w http.ResponseWriter, requestID string, err error, status int) {
	code := protocol.CodeOf(err)
	if status == 0 {
		status = HTTPStatus(code)
	}
	h := w.Header()
	h.Set(HeaderError, code.String())
	if requestID != "" {
		h.Set(HeaderRequestID, requestID)
	}
	if status == http.StatusProxyAuthRequired {
		h.Set("Proxy-Authenticate", `Basic realm="tether"`)
	}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Connection", "close")
	w.WriteHeader(status)
	fmt.Fprintln(w, err.Error())
}

// authenticateRequest finds who sent a CONNECT request: a client
// certificate verified in the TLS handshake, or the Proxy-Authorization
// header (Basic: backend name and API key; Bearer: a token from the OIDC
// issuer). claimed is the name a refused request claimed, for the audit.
func (r *Relay) authenticateRequest(ctx context.Context, req *http.Request) (who *caller, claimed string, err error) {
	auth := req.Header.Get("Proxy-Authorization")
	if req.TLS != nil && len(req.TLS.PeerCertificates) > 0 {
		if auth != "" {
			return nil, "", protocol.Errorf(protocol.CodeUnauthenticated, "send one credential: a client certificate or a Proxy-Authorization header, not both")
		}
		who, err := r.authenticateCertificate(ctx, req.TLS.PeerCertificates)
		if len(req.TLS.PeerCertificates[0].URIs) > 0 {
			claimed = req.TLS.PeerCertificates[0].URIs[0].String()
		}
		return who, claimed, err
	}
	scheme, cred, _ := strings.Cut(auth, " ")
	switch {
	case strings.EqualFold(scheme, "Bearer"):
		who, err := r.authenticateBearer(ctx, strings.TrimSpace(cred))
		return who, "", err
	case strings.EqualFold(scheme, "Basic"):
		name, key, _ := proxyBasicAuth(req)
		who, err := r.authenticate(ctx, name, key)
		return who, name, err
	}
	return r.noCredentials()
}

func (r *Relay) noCredentials() (*caller, string, error) {
	ways := "Proxy-Authorization: Basic with the backend name and API key"
	if r.bearer != nil {
		ways += ", Bearer with a token from " + r.cfg.OIDC.Issuer
	}
	if r.connectTLSLn != nil {
		ways += ", or a client certificate on the TLS front door"
	}
	return nil, "", protocol.Errorf(protocol.CodeUnauthenticated, "backend credentials required (%s)", ways)
}

// proxyBasicAuth parses a Proxy-Authorization: Basic header.
func proxyBasicAuth(req *http.Request) (user, pass string, ok bool) {
	auth := req.Header.Get("Proxy-Authorization")
	scheme, cred, found := strings.Cut(auth, " ")
	if !found || !strings.EqualFold(scheme, "Basic") {
		return "", "", false
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(cred))
	if err != nil {
		return "", "", false
	}
	return strings.Cut(string(raw), ":")
}

// prefixedStream replays bytes already read from a connection before
// reading from it again.
type prefixedStream struct {
	transport.Stream
	r io.Reader
}

func (p *prefixedStream) Read(b []byte) (int, error) { return p.r.Read(b) }

// with returns attrs followed by more, never writing into attrs' spare
// capacity (which another call may share).
func with(attrs []any, more ...any) []any {
	return append(attrs[:len(attrs):len(attrs)], more...)
}

// targetAttrs adds the tenant and service of a stream's target to log
// attributes when the target names them.
func targetAttrs(attrs []any, target string) []any {
	if t, err := ParseTarget(target); err == nil {
		return with(attrs, "tenant", t.Tenant, "service", t.Service)
	}
	return attrs
}
