package agent

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tetherhq/tether/agent/accesslog"
	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/transport"
)

// headerTimeout bounds reading the stream header the relay sends first,
// and writing the answer once the service's dial is over. A variable for
// tests.
var headerTimeout = 10 * time.Second

// handleStream serves one stream the relay opened: read the header, check
// the service against the allowlist, dial it, answer, and splice. Every
// stream served or refused (but the agent's own release downloads) gets a
// line in the access log when it ends, and one served also an open line
// when it is accepted.
//
// The trial of a new binary serves nothing: it resets every stream
// without a reply (an older relay may send it some). The relay takes a
// reset for a failure of the connection, not a refusal, and tries another
// of the tenant's, the running agent's; a refusal would go to the client.
// The trial keeps no access log, dials no service, and exits moments
// later, cutting whatever it served.
func (a *Agent) handleStream(s *session, st transport.Stream) {
	if a.cfg.UpdateTrial != "" {
		s.log.Info("update trial: resetting a stream the relay opened; a trial serves none, the relay tries another connection")
		transport.Abort(st)
		return
	}
	defer st.Close()
	started := time.Now()
	st.SetDeadline(started.Add(headerTimeout))
	h, err := protocol.ReadStreamHeader(st)
	if err != nil {
		var pe *protocol.Error
		var ne net.Error
		if !errors.As(err, &pe) && !(errors.As(err, &ne) && ne.Timeout()) {
			// Reset or closed before its header was read: the relay gave
			// up on the stream (an answer too slow, the client gone).
			s.log.Debug("stream ended before its header was read", "err", relayClosed(err))
			return
		}
		s.refusalLog.log(s.log, slog.LevelWarn, "bad stream header from relay", "err", err)
		if pe != nil {
			refuse(st, pe)
			a.logRefusal(streamRecord(s, protocol.StreamHeader{}), started, pe)
		}
		return
	}
	// Attributes go to each log call: Logger.With would format them for
	// every stream, logged or not.
	log := s.log
	ids := []any{"request", h.RequestID, "service", h.Service, "backend", h.Backend}
	if h.Service == protocol.UpdateService && a.upd != nil {
		a.upd.updateStream(st, h)
		return
	}
	rec := streamRecord(s, h)
	if perr := a.accessLogRefusal(); perr != nil {
		log.Debug("refused: the access log cannot be written and access_log.required is set", ids...) // the log says why, rate-limited
		refuse(st, perr)
		a.logRefusal(rec, started, perr) // written if the log recovers, else counted as lost
		return
	}
	svc, ok := (*a.services.Load())[h.Service]
	if !ok {
		s.refusalLog.log(log, slog.LevelInfo, "refused: service not in this agent's allowlist", ids...)
		perr := protocol.Errorf(protocol.CodeUnknownService, "tenant %q's agent does not expose a service named %q", a.state.Tenant, h.Service)
		refuse(st, perr)
		a.logRefusal(rec, started, perr)
		return
	}
	if !svc.allows(h.Backend) {
		s.refusalLog.log(log, slog.LevelInfo, "refused: backend not allowed for this service by the agent's config", ids...)
		perr := protocol.Errorf(protocol.CodeNotAllowed, "tenant %q's agent does not allow %s to reach service %q", a.state.Tenant, h.Backend, h.Service)
		refuse(st, perr)
		a.logRefusal(rec, started, perr)
		return
	}
	dctx, cancel := context.WithTimeout(context.Background(), a.cfg.DialTimeout)
	conn, err := a.cfg.DialService(dctx, "tcp", svc.Address)
	cancel()
	// The answer gets a deadline of its own: the header's may have passed
	// during the dial, which dial_timeout bounds from the header on. Over
	// QUIC a write past its deadline fails at once, and the relay would
	// read a reset instead of the refusal (and try the service again
	// through another connection) or instead of the OK.
	st.SetDeadline(time.Now().Add(headerTimeout))
	if err != nil {
		perr := dialError(h.Service, a.cfg.DialTimeout, err)
		a.rep.dialFailed(h.Service, perr.Message)
		log.Warn("cannot reach service", slices.Concat(ids, []any{"address", svc.Address, "code", perr.Code.String(), "err", err})...)
		refuse(st, perr)
		a.logRefusal(rec, started, perr)
		return
	}
	if !s.addService(conn) {
		conn.Close()
		log.Debug("session closing: stream dropped before the reply", ids...)
		rec.Code, rec.End, rec.Message = protocol.CodeUnavailable.String(), accesslog.EndCut, "the agent's session to the relay was closing: dropped before the reply"
		a.logStream(rec, started)
		return
	}
	defer s.removeService(conn)
	ss := a.addServed(h, svc.Address, conn)
	defer a.removeServed(ss)
	if err := protocol.WriteReply(st, protocol.Reply{}); err != nil {
		conn.Close()
		log.Debug("relay went away before the reply", slices.Concat(ids, []any{"err", relayClosed(err)})...)
		rec.Code, rec.End, rec.Message = protocol.CodeOK.String(), accesslog.EndCut, "the relay went away before the reply"
		a.logStream(rec, started)
		return
	}
	st.SetDeadline(time.Time{})
	// The open line: a stream that lasts leaves a trace at once, even if
	// the agent is killed before it ends and writes its line.
	a.logOpen(rec, started)
	a.streamsOpen.Add(1)
	a.streamsTotal.Add(1)
	start := time.Now()
	ctr := a.rep.streamStarted()
	res, err := transport.SpliceCounting(st, asStream(conn), a.cfg.IdleTimeout, ctr)
	a.rep.streamEnded(ctr, res)
	a.streamsOpen.Add(-1)
	rec.Code, rec.End, rec.BytesToService, rec.BytesFromService = protocol.CodeOK.String(), streamEnd(err), res.AToB, res.BToA
	if why := ss.cutWhy(); why != "" {
		rec.End, rec.Message = accesslog.EndCut, why
		log.Info("stream cut: the agent's config no longer allows it", slices.Concat(ids, []any{"why", why})...)
	}
	a.logStream(rec, started)
	attrs := slices.Concat(ids, []any{"bytes_to_service", res.AToB, "bytes_from_service", res.BToA, "duration", time.Since(start).Round(time.Microsecond)})
	switch {
	case errors.Is(err, transport.ErrIdle):
		log.Info("stream closed: idle timeout", attrs...)
	case err != nil && !transport.IsClosedErr(err):
		log.Debug("stream ended with error", append(attrs, "err", relayClosed(err))...)
	default:
		log.Debug("stream closed", attrs...)
	}
}

// refuse answers a stream with a refusal and ends it cleanly, so the relay
// reads the reply rather than a reset.
func refuse(st transport.Stream, e *protocol.Error) {
	if protocol.WriteReply(st, protocol.ReplyFor(e)) == nil {
		st.CloseWrite()
	}
}

// dialError classifies a failed dial. The message says what happened
// without the service's internal address, which stays inside the tenant.
func dialError(service string, timeout time.Duration, err error) *protocol.Error {
	var ne net.Error
	var dns *net.DNSError
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return protocol.Errorf(protocol.CodeTimeout, "service %q did not accept a connection within %v", service, timeout)
	case errors.Is(err, syscall.ECONNREFUSED):
		return protocol.Errorf(protocol.CodeTargetUnreachable, "service %q refused the connection (is it running?)", service)
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return protocol.Errorf(protocol.CodeTargetUnreachable, "service %q: no route to its host from the agent", service)
	case errors.As(err, &dns):
		return protocol.Errorf(protocol.CodeTargetUnreachable, "service %q: its host name does not resolve from the agent", service)
	}
	return protocol.Errorf(protocol.CodeTargetUnreachable, "service %q is unreachable from the agent", service)
}

// asStream adapts a connection to transport.Stream; a connection that
// cannot half-close gets a CloseWrite that does nothing.
func asStream(c net.Conn) transport.Stream {
	if s, ok := c.(transport.Stream); ok {
		return s
	}
	return noHalfClose{c}
}

type noHalfClose struct{ net.Conn }

func (noHalfClose) CloseWrite() error { return nil }

// addService records conn, the service connection of a stream starting on
// s. It reports false when s is closing: the caller closes conn.
func (s *session) addService(conn net.Conn) bool {
	s.svcMu.Lock()
	defer s.svcMu.Unlock()
	if s.svcClosed {
		return false
	}
	if s.svcConns == nil {
		s.svcConns = make(map[net.Conn]struct{})
	}
	s.svcConns[conn] = struct{}{}
	return true
}

// removeService forgets conn once its stream has ended.
func (s *session) removeService(conn net.Conn) {
	s.svcMu.Lock()
	defer s.svcMu.Unlock()
	delete(s.svcConns, conn)
}

// closeServices resets the service connections of the streams still in
// flight (the stream was cut: the service must not take it for a clean
// end) and refuses new ones.
func (s *session) closeServices() {
	s.svcMu.Lock()
	defer s.svcMu.Unlock()
	s.svcClosed = true
	for c := range s.svcConns {
		transport.Reset(c)
	}
	clear(s.svcConns)
}

// servedStream is a stream connected to its service, as the config
// allowed it then.
type servedStream struct {
	service, backend, address string
	conn                      net.Conn
	cut                       atomic.Pointer[string] // why a reload cut it
}

func (ss *servedStream) cutWhy() string {
	if p := ss.cut.Load(); p != nil {
		return *p
	}
	return ""
}

// addServed records a stream connected to address for the service and
// backend of h. If the services changed since the stream was checked
// against them and no longer allow it, it is cut at once: a reload that
// stored them before this ran did not see the stream.
func (a *Agent) addServed(h protocol.StreamHeader, address string, conn net.Conn) *servedStream {
	ss := &servedStream{service: h.Service, backend: h.Backend, address: address, conn: conn}
	a.servedMu.Lock()
	defer a.servedMu.Unlock()
	if a.served == nil {
		a.served = make(map[*servedStream]struct{})
	}
	a.served[ss] = struct{}{}
	if why := disallowed(*a.services.Load(), ss); why != "" {
		ss.cutNow(why)
	}
	return ss
}

func (a *Agent) removeServed(ss *servedStream) {
	a.servedMu.Lock()
	defer a.servedMu.Unlock()
	delete(a.served, ss)
}

// cutDisallowed cuts the streams that svcs, the services just loaded,
// no longer allow: their service was removed, its address changed, or
// its backends no longer include the stream's. It returns how many.
func (a *Agent) cutDisallowed(svcs map[string]Service) int {
	a.servedMu.Lock()
	defer a.servedMu.Unlock()
	n := 0
	for ss := range a.served {
		if ss.cutWhy() != "" {
			continue
		}
		if why := disallowed(svcs, ss); why != "" {
			ss.cutNow(why)
			n++
		}
	}
	return n
}

// disallowed says why svcs do not allow ss, or "" if they do.
func disallowed(svcs map[string]Service, ss *servedStream) string {
	svc, ok := svcs[ss.service]
	switch {
	case !ok:
		return "cut: the service was removed from the agent's config"
	case svc.Address != ss.address:
		return "cut: the service's address changed in the agent's config"
	case !svc.allows(ss.backend):
		return "cut: the agent's config no longer allows this backend to reach the service"
	}
	return ""
}

// cutNow resets the stream's service connection, which ends its splice
// and resets the stream to the relay too.
func (ss *servedStream) cutNow(why string) {
	ss.cut.Store(&why)
	transport.Reset(ss.conn)
}
