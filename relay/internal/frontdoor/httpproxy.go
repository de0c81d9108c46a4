package frontdoor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/relay/internal/audit"
	"github.com/tetherhq/tether/relay/internal/metrics"
	"github.com/tetherhq/tether/relay/internal/route"
)

// The CONNECT doors also serve plain HTTP proxy requests: an absolute-form
// request for an http:// URL of a tenant service ("GET
// http://api.acme.tether/path HTTP/1.1"), with Proxy-Authorization (or a
// client certificate on the TLS door) as CONNECT takes it. So HTTP_PROXY
// works for http:// URLs in any language, not only through CONNECT. The
// request goes on to the service over HTTP/1.1 on a tunnel stream;
// hop-by-hop headers and Proxy-Authorization stay behind. Each upstream
// connection is its own stream, kept alive for more requests of the same
// backend to the same service and never shared beyond that (another
// backend, tenant or service dials its own). Every request is authorized
// again, so a grant removed stops the next request on a kept connection.
//
// Tether-Request-Id on an answer is the id of the stream that carried it
// (the id the agent's access log and the stream's audit record carry),
// which is the request's own when the request opened the stream; on a
// refusal it is the request's own, as in the refusal's log line and audit
// record.

// Upstream connections kept idle per backend and service, and for how
// long. An idle connection is an open stream: it counts against the
// tenant's stream limit.
const (
	proxyIdlePerService = 8
	proxyIdleTimeout    = 30 * time.Second
)

// maxProxyTransports bounds the (backend, service) pairs with a pool;
// past it the pool of one pair is dropped (its idle connections closed)
// for the new one. A variable for tests.
var maxProxyTransports = 4096

// isProxyRequest reports whether req is a plain HTTP proxy request: its
// target in absolute form, for an http:// URL.
func isProxyRequest(req *http.Request) bool {
	return req.URL != nil && req.URL.IsAbs() && strings.EqualFold(req.URL.Scheme, "http") && req.URL.Host != ""
}

// proxyKey names a pool of upstream connections: one backend's to one
// service.
type proxyKey struct {
	backend, tenant, service string
}

// httpProxy is the plain HTTP proxy of the CONNECT doors.
type httpProxy struct {
	fd *Server
	rp *httputil.ReverseProxy

	mu         sync.Mutex // guards transports, conns and closed
	transports map[proxyKey]*http.Transport
	conns      map[*proxyConn]struct{} // upstream connections open
	closed     bool
	dials      sync.WaitGroup // upstream dials in progress; Add only under mu, while !closed
}

func newHTTPProxy(fd *Server) *httpProxy {
	p := &httpProxy{fd: fd, transports: map[proxyKey]*http.Transport{}, conns: map[*proxyConn]struct{}{}}
	p.rp = &httputil.ReverseProxy{
		Rewrite:        rewriteProxyRequest,
		Transport:      roundTripperFunc(p.roundTrip),
		FlushInterval:  -1, // answers stream to the backend as they come
		ModifyResponse: p.modifyResponse,
		ErrorHandler:   p.upstreamError,
		ErrorLog:       slog.NewLogLogger(fd.log.Handler(), slog.LevelDebug),
	}
	return p
}

// proxyRequest is what the proxy knows of one request, in its context.
type proxyRequest struct {
	id     string // the request's id
	door   string
	remote string
	who    *caller
	addr   string // the target as the doors take it, host:port
	target route.Target
	// dialCtx is the doors' context (Run's), carried with the request:
	// net/http dials without the request's cancellation, and an upstream
	// dial must still end with the doors.
	dialCtx context.Context
	// stream is the id of the stream that carried the request, once it
	// has one.
	stream atomic.Pointer[string]
}

type proxyRequestKey struct{}

func proxyRequestOf(ctx context.Context) *proxyRequest {
	pr, _ := ctx.Value(proxyRequestKey{}).(*proxyRequest)
	return pr
}

// serveHTTPProxy serves one plain HTTP proxy request (isProxyRequest),
// whose id is id.
func (fd *Server) serveHTTPProxy(ctx context.Context, w http.ResponseWriter, req *http.Request, id string, fc *frontConn) {
	door := "http-proxy"
	if req.TLS != nil {
		door = "http-proxy-tls"
	}
	attrs := []any{"door", door, "request", id, "remote", req.RemoteAddr, "method", req.Method}
	addr := req.URL.Host
	if _, _, err := net.SplitHostPort(addr); err != nil {
		addr = net.JoinHostPort(strings.TrimSuffix(strings.TrimPrefix(addr, "["), "]"), "80")
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
	attrs = with(attrs, "backend", who.name, "target", addr)
	refuse := func(err error) {
		fd.log.Info("refused", with(targetAttrs(attrs, addr), "code", protocol.CodeOf(err).String(), "err", err)...)
		fd.auditRefusal(door, req.RemoteAddr, id, who, addr, err)
		writeRefusal(w, id, err, 0)
	}
	t, err := route.ParseTarget(addr)
	if err != nil {
		refuse(err)
		return
	}
	if upgrade := req.Header.Get("Upgrade"); upgrade != "" {
		refuse(protocol.Errorf(protocol.CodeBadRequest, "a plain HTTP proxy request cannot switch protocols (Upgrade: %s): use CONNECT", protocol.Clip(upgrade, 64)))
		return
	}
	// A kept connection skips the checks of a stream open: authorize
	// every request.
	if err := fd.authorize(ctx, who, t); err != nil {
		refuse(err)
		return
	}
	pr := &proxyRequest{id: id, door: door, remote: req.RemoteAddr, who: who, addr: addr, target: t, dialCtx: ctx}
	req = req.WithContext(context.WithValue(req.Context(), proxyRequestKey{}, pr))
	start := time.Now()
	rw := &statusWriter{ResponseWriter: w}
	fd.proxy.rp.ServeHTTP(rw, req)
	stream := ""
	if s := pr.stream.Load(); s != nil {
		stream = *s
	}
	fd.log.Debug("proxied", with(targetAttrs(attrs, addr), "stream", stream, "status", rw.status, "duration", time.Since(start).Round(time.Microsecond))...)
}

// statusWriter remembers the status written, for the log.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection's writer
// (ReverseProxy flushes through it).
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// rewriteProxyRequest makes the request to the service: the same method,
// URL (sent in origin form), Host and headers, less the hop-by-hop ones
// and Proxy-Authorization (ReverseProxy drops those). Forwarding headers
// the backend sent pass as they are; the relay adds none.
func rewriteProxyRequest(pr *httputil.ProxyRequest) {
	for _, h := range []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"} {
		if v, ok := pr.In.Header[h]; ok {
			pr.Out.Header[h] = v
		}
	}
	pr.Out.Header.Del("Proxy-Authorization")
	pr.Out.Header.Del("Proxy-Connection")
	pr.Out.Host = pr.In.Host
	// The trace tells which stream carried the request.
	if r := proxyRequestOf(pr.In.Context()); r != nil {
		pr.Out = pr.Out.WithContext(httptrace.WithClientTrace(pr.Out.Context(), &httptrace.ClientTrace{
			GotConn: func(info httptrace.GotConnInfo) {
				if c, ok := info.Conn.(*proxyConn); ok {
					r.stream.Store(&c.tun.requestID)
				}
			},
		}))
	}
}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }

// roundTrip sends req on a connection of its backend's pool for its
// service.
func (p *httpProxy) roundTrip(req *http.Request) (*http.Response, error) {
	r := proxyRequestOf(req.Context())
	if r == nil {
		return nil, protocol.Errorf(protocol.CodeInternal, "proxy request without its context")
	}
	t, err := p.transport(proxyKey{backend: r.who.name, tenant: r.target.Tenant, service: r.target.Service})
	if err != nil {
		return nil, err
	}
	return t.RoundTrip(req)
}

// transport returns the pool of key, making it on first use.
func (p *httpProxy) transport(key proxyKey) (*http.Transport, error) {
	t, dropped, err := p.transportLocked(key)
	if dropped != nil {
		// Closed without mu: closing its idle connections closes their
		// streams (proxyConn.Close), which takes mu.
		dropped.CloseIdleConnections()
	}
	return t, err
}

// transportLocked is transport under mu; dropped is the pool dropped to
// make room, whose idle connections the caller closes.
func (p *httpProxy) transportLocked(key proxyKey) (t, dropped *http.Transport, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, nil, protocol.Errorf(protocol.CodeUnavailable, "the relay is shutting down")
	}
	if t, ok := p.transports[key]; ok {
		return t, nil, nil
	}
	if len(p.transports) >= maxProxyTransports {
		for k, t := range p.transports {
			dropped = t
			delete(p.transports, k)
			break
		}
	}
	t = &http.Transport{
		Proxy:                  nil, // never the relay's own proxy
		DialContext:            p.dial,
		ForceAttemptHTTP2:      false,
		DisableCompression:     true, // the backend's Accept-Encoding passes as sent
		MaxIdleConnsPerHost:    proxyIdlePerService,
		IdleConnTimeout:        proxyIdleTimeout,
		ResponseHeaderTimeout:  p.fd.cfg.IdleTimeout,
		MaxResponseHeaderBytes: 1 << 20,
	}
	p.transports[key] = t
	return t, dropped, nil
}

// dial opens an upstream connection: a stream to the request's service as
// its backend, under the request's id. A refusal is logged and audited
// here, where it happens; the request is answered by upstreamError.
func (p *httpProxy) dial(ctx context.Context, _, _ string) (net.Conn, error) {
	r := proxyRequestOf(ctx)
	if r == nil {
		return nil, protocol.Errorf(protocol.CodeInternal, "proxy dial without its request")
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, protocol.Errorf(protocol.CodeUnavailable, "the relay is shutting down")
	}
	p.dials.Add(1)
	p.mu.Unlock()
	defer p.dials.Done()
	// net/http dials on without the request's cancellation; the doors'
	// own context still ends it.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(r.dialCtx, cancel)()
	fd := p.fd
	tun, err := fd.dial(ctx, r.who, r.addr, r.id, nil)
	if err != nil {
		fd.log.Info("refused", "door", r.door, "request", r.id, "remote", r.remote, "backend", r.who.name, "target", r.addr,
			"tenant", r.target.Tenant, "service", r.target.Service, "code", protocol.CodeOf(err).String(), "err", err)
		fd.auditRefusal(r.door, r.remote, r.id, r.who, r.addr, err)
		return nil, err
	}
	tun.Stream = fd.throttle(tun.target.Tenant, tun.Stream) // the tenant's bandwidth limit, as at the other doors
	c := &proxyConn{tun: tun, p: p, door: r.door, flow: fd.cfg.Metrics.Bytes.Open(tun.target.Tenant, tun.Agent)}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		fd.cfg.Metrics.Bytes.Close(c.flow)
		err := protocol.Errorf(protocol.CodeUnavailable, "the relay is shutting down")
		fd.abandon(tun, r.door, err)
		return nil, err
	}
	p.conns[c] = struct{}{}
	p.mu.Unlock()
	return c, nil
}

// modifyResponse marks an answer with the id of the stream that carried
// it. Tether's headers are the relay's to send: a service's own are
// dropped, so that it cannot pass for a refusal.
func (p *httpProxy) modifyResponse(resp *http.Response) error {
	resp.Header.Del(HeaderError)
	resp.Header.Del(HeaderRequestID)
	if r := proxyRequestOf(resp.Request.Context()); r != nil {
		if s := r.stream.Load(); s != nil {
			resp.Header.Set(HeaderRequestID, *s)
		} else {
			resp.Header.Set(HeaderRequestID, r.id)
		}
	}
	return nil
}

// upstreamError answers a request that got no answer from the service: a
// refusal (the stream could not be opened; dial logged and audited it)
// with its typed status, and a service that failed mid-way with
// target_unreachable (502).
func (p *httpProxy) upstreamError(w http.ResponseWriter, req *http.Request, err error) {
	r := proxyRequestOf(req.Context())
	id := ""
	if r != nil {
		id = r.id
	}
	if errors.Is(err, context.Canceled) && req.Context().Err() != nil {
		return // the backend went away; nobody reads an answer
	}
	var pe *protocol.Error
	if !errors.As(err, &pe) {
		if r != nil {
			p.fd.log.Info("proxied request failed", "door", r.door, "request", id, "remote", r.remote, "backend", r.who.name, "target", r.addr, "err", err)
		}
		err = protocol.Errorf(protocol.CodeTargetUnreachable, "the service's answer failed: %v", err)
	}
	writeRefusal(w, id, err, 0)
}

// close ends the proxy: no new upstream connection, every open one
// closed, and every dial in progress over. Called once the doors' handlers
// have returned.
func (p *httpProxy) close() {
	p.mu.Lock()
	p.closed = true
	ts := p.transports
	p.transports = nil
	conns := make([]*proxyConn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	for _, t := range ts {
		t.CloseIdleConnections()
	}
	for _, c := range conns {
		c.Close()
	}
	p.dials.Wait()
}

// proxyConn is an upstream connection: a tunnel stream as a net.Conn for
// net/http. Its bytes are counted as they move (flow); closing it ends
// the stream, which is then audited like any other.
type proxyConn struct {
	tun       *tunnel
	p         *httpProxy
	door      string
	flow      *metrics.Flow // a to b: to the service
	closeOnce sync.Once
}

func (c *proxyConn) Read(b []byte) (int, error) {
	n, err := c.tun.Stream.Read(b)
	c.flow.Counter.BToA.Add(int64(n))
	return n, err
}

func (c *proxyConn) Write(b []byte) (int, error) {
	n, err := c.tun.Stream.Write(b)
	c.flow.Counter.AToB.Add(int64(n))
	return n, err
}

// Close closes the stream and records it.
func (c *proxyConn) Close() error {
	var err error
	c.closeOnce.Do(func() {
		err = c.tun.Stream.Close()
		c.tun.End()
		c.tun.release()
		p := c.p
		p.mu.Lock()
		delete(p.conns, c)
		p.mu.Unlock()
		fd, t := p.fd, c.tun
		fd.cfg.Metrics.Bytes.Close(c.flow)
		to, from := c.flow.Counter.AToB.Load(), c.flow.Counter.BToA.Load()
		fd.cfg.Audit.Record(t.record(c.door, audit.OutcomeOK, to, from))
		attrs := []any{"door", c.door, "request", t.requestID, "backend", t.caller.name, "tenant", t.target.Tenant, "service", t.target.Service, "agent", t.Agent}
		if t.Relay != "" {
			// Forwarded: the agent is connected to that relay of the cluster.
			attrs = append(attrs, "relay", t.Relay)
		}
		fd.log.Debug("stream closed", append(attrs, "bytes_to_service", to, "bytes_from_service", from, "duration", time.Since(t.Opened).Round(time.Microsecond))...)
	})
	return err
}

func (c *proxyConn) LocalAddr() net.Addr { return proxyAddr("relay") }
func (c *proxyConn) RemoteAddr() net.Addr {
	return proxyAddr(c.tun.target.Service + "." + c.tun.target.Tenant + route.TargetSuffix)
}

func (c *proxyConn) SetDeadline(t time.Time) error { return c.tun.Stream.SetDeadline(t) }

func (c *proxyConn) SetReadDeadline(t time.Time) error {
	if d, ok := c.tun.Stream.(interface{ SetReadDeadline(time.Time) error }); ok {
		return d.SetReadDeadline(t)
	}
	return fmt.Errorf("tunnel stream %T has no read deadline", c.tun.Stream)
}

func (c *proxyConn) SetWriteDeadline(t time.Time) error {
	if d, ok := c.tun.Stream.(interface{ SetWriteDeadline(time.Time) error }); ok {
		return d.SetWriteDeadline(t)
	}
	return fmt.Errorf("tunnel stream %T has no write deadline", c.tun.Stream)
}

// proxyAddr is the address of one end of an upstream connection.
type proxyAddr string

func (a proxyAddr) Network() string { return "tether" }
func (a proxyAddr) String() string  { return string(a) }
