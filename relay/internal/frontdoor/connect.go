package frontdoor

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/transport"
	"github.com/tetherhq/tether/relay/internal/credential"
	"github.com/tetherhq/tether/relay/internal/route"
)

// Front-door HTTP headers carrying a refusal's code and the request id.
const (
	HeaderError     = "Tether-Error"
	HeaderRequestID = "Tether-Request-Id"
)

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
	case protocol.CodeLimitExceeded, protocol.CodeRateLimited:
		return http.StatusTooManyRequests
	}
	return http.StatusInternalServerError
}

func (fd *Server) connectServer(ctx context.Context) *http.Server {
	return &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			fd.handlers.Add(1)
			defer fd.handlers.Done()
			fd.serveCONNECT(ctx, w, req)
		}),
		ReadHeaderTimeout: fd.cfg.HandshakeTimeout,
		IdleTimeout:       fd.cfg.HandshakeTimeout,
		MaxHeaderBytes:    maxConnectHeader,
		ErrorLog:          slog.NewLogLogger(fd.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ConnContext:       withFrontConn,
	}
}

func (fd *Server) serveCONNECT(ctx context.Context, w http.ResponseWriter, req *http.Request) {
	// The request's id, from its arrival: every answer, log line and
	// audit record of it carries this id, refusals included, and the
	// stream opened for it is opened under it (the agent logs it too).
	id := credential.NewRequestID()
	attrs := []any{"door", "connect", "request", id, "remote", req.RemoteAddr}
	fc := frontConnOf(req.Context())
	if fc != nil {
		fc.serve()
		defer fc.authenticated()
	}
	if req.Method != http.MethodConnect {
		if isProxyRequest(req) {
			fd.serveHTTPProxy(ctx, w, req, id, fc)
			return
		}
		w.Header().Set("Allow", http.MethodConnect)
		writeRefusal(w, id, protocol.Errorf(protocol.CodeBadRequest, "this is a CONNECT proxy: use CONNECT <service>.<tenant>.tether:<port>, or a plain HTTP proxy request for http://<service>.<tenant>.tether/..."), http.StatusMethodNotAllowed)
		return
	}
	door := "connect"
	if req.TLS != nil {
		door = "connect-tls"
		attrs[1] = door
	}
	// Malformed before anything else: net/http lets through targets that
	// are not host:port (user@host, an empty or over-long host). Nothing
	// is authenticated yet: logged at info level within the source's log
	// budget (as refused credentials are), at debug level beyond it, and
	// counted in tether_streams_opened_total (outcome bad_request).
	if err := checkConnectTarget(req.RequestURI); err != nil {
		level := slog.LevelDebug
		if fd.guard.logged(req.RemoteAddr) {
			level = slog.LevelInfo
		}
		fd.log.Log(ctx, level, "refused", with(attrs, "code", protocol.CodeOf(err).String(), "err", err)...)
		if fd.cfg.Metrics != nil {
			fd.cfg.Metrics.StreamOpened("", "", "", protocol.CodeOf(err))
		}
		writeRefusal(w, id, err, 0)
		return
	}
	who, claimed, err := fd.authenticateRequest(ctx, req)
	if fc != nil {
		fc.authenticated()
	}
	if err != nil {
		fd.refusedAuth(ctx, door, req.RemoteAddr, id, claimed, err, attrs)
		writeRefusal(w, id, err, 0)
		return
	}
	attrs = with(attrs, "backend", who.name, "target", req.Host)
	tun, err := fd.dial(ctx, who, req.Host, id, nil)
	if err != nil {
		fd.log.Info("refused", with(targetAttrs(attrs, req.Host), "code", protocol.CodeOf(err).String(), "err", err)...)
		fd.auditRefusal(door, req.RemoteAddr, id, who, req.Host, err)
		writeRefusal(w, id, err, 0)
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		fd.abandon(tun, door, fmt.Errorf("hijack the CONNECT connection: %w", err))
		fd.log.Error("hijack CONNECT connection", with(attrs, "err", err)...)
		return
	}
	if u, ok := conn.(interface{ unwrap() net.Conn }); ok {
		conn = u.unwrap() // the frontConn's work is done
	}
	fd.front.add(conn)
	defer fd.front.remove(conn)
	conn.SetDeadline(time.Time{})
	if _, err := io.WriteString(conn, "HTTP/1.1 200 Connection established\r\n"+HeaderRequestID+": "+tun.requestID+"\r\n\r\n"); err != nil {
		fd.abandon(tun, door, fmt.Errorf("answer the CONNECT request: %w", err))
		conn.Close()
		fd.log.Info("stream closed before it was bridged", with(attrs, "err", err)...)
		return
	}
	front, ok := conn.(transport.Stream)
	if !ok {
		fd.abandon(tun, door, fmt.Errorf("a %T cannot half-close", conn))
		conn.Close()
		fd.log.Error("CONNECT connection cannot half-close", with(attrs, "type", fmt.Sprintf("%T", conn))...)
		return
	}
	if n := brw.Reader.Buffered(); n > 0 { // bytes the client sent right after its request
		front = &prefixedStream{Stream: front, r: io.MultiReader(io.LimitReader(brw.Reader, int64(n)), front)}
	}
	fd.bridge(front, tun, with(attrs, "tenant", tun.target.Tenant, "service", tun.target.Service))
}

// writeRefusal answers a CONNECT request (or a plain HTTP proxy request)
// with the status for err's code, the code in the Tether-Error header, the
// request id in Tether-Request-Id and the message in the body.
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
	if s := retryAfter(err); s > 0 {
		h.Set("Retry-After", strconv.Itoa(s))
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
// A refused credential is counted against the request's source and the
// name it claimed, and answered rate_limited once either has failed too
// often (authlimit.go).
func (fd *Server) authenticateRequest(ctx context.Context, req *http.Request) (who *caller, claimed string, err error) {
	auth := req.Header.Get("Proxy-Authorization")
	if req.TLS != nil && len(req.TLS.PeerCertificates) > 0 {
		if auth != "" {
			return nil, "", fd.guard.refused(req.RemoteAddr, reasonNoCredentials, "", protocol.Errorf(protocol.CodeUnauthenticated, "send one credential: a client certificate or a Proxy-Authorization header, not both"))
		}
		who, err := fd.authenticateCertificate(ctx, req.TLS.PeerCertificates)
		if len(req.TLS.PeerCertificates[0].URIs) > 0 {
			claimed = req.TLS.PeerCertificates[0].URIs[0].String()
		}
		return who, claimed, fd.guard.refused(req.RemoteAddr, reasonBadCertificate, claimed, err)
	}
	scheme, cred, _ := strings.Cut(auth, " ")
	switch {
	case strings.EqualFold(scheme, "Bearer"):
		who, err := fd.authenticateBearer(ctx, strings.TrimSpace(cred))
		return who, "", fd.guard.refused(req.RemoteAddr, reasonBadToken, "", err)
	case strings.EqualFold(scheme, "Basic"):
		name, key, _ := proxyBasicAuth(req)
		who, err := fd.authenticate(ctx, req.RemoteAddr, name, key)
		return who, name, fd.guard.refused(req.RemoteAddr, reasonBadKey, name, err)
	}
	who, claimed, err = fd.noCredentials()
	return who, claimed, fd.guard.refused(req.RemoteAddr, reasonNoCredentials, "", err)
}

func (fd *Server) noCredentials() (*caller, string, error) {
	ways := "Proxy-Authorization: Basic with the backend name and API key"
	if fd.bearer != nil {
		ways += ", Bearer with a token from " + fd.cfg.OIDC.Issuer
	}
	if fd.connectTLSLn != nil {
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
	if t, err := route.ParseTarget(target); err == nil {
		return with(attrs, "tenant", t.Tenant, "service", t.Service)
	}
	return attrs
}

// The CONNECT front doors are served by net/http, which refuses some
// malformed requests itself, before any handler sees them (a control
// character or a port name in the target, a request line or header block
// over the size limit, a malformed Host header), with a bare "400 Bad
// Request" that says neither what nor, to the Go Dialer, which refusal.
// frontConn stands between net/http and each connection until the handler
// has the request: it answers those refusals itself, typed as every other
// (Tether-Error: bad_request and a one-line message), and it holds the
// connection's place in the bound on unauthenticated connections per
// source (Config.MaxFrontPendingPerAddress).
