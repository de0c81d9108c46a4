package frontdoor

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/transport"
	"github.com/tetherhq/tether/relay/internal/audit"
	"github.com/tetherhq/tether/relay/internal/route"
)

// tunnel is an open stream to a service through an agent, after the agent
// answered OK.
type tunnel struct {
	*route.Tunnel
	requestID string
	target    route.Target
	caller    *caller
	early     int    // bytes of the client's sent with the stream's opening
	release   func() // uncounts the stream from its tenant's limit
}

// abandon closes a tunnel that will not be bridged: its client went away
// while the stream opened, or the door could not tell it the stream was
// open. The agent had dialled the service and keeps the stream in the
// tenant's access log, so the relay's audit keeps it too, with the outcome
// abandoned and why (the tenant's record must have the vendor's
// counterpart). The client's first bytes sent with the opening, if any,
// count as sent to the service: they went to the agent, which may have
// passed fewer on before the stream closed.
func (fd *Server) abandon(t *tunnel, door string, why error) {
	t.Abandon()
	t.release()
	rec := t.record(door, audit.OutcomeAbandoned, int64(t.early), 0)
	rec.Detail["error"] = why.Error()
	fd.cfg.Audit.Record(rec)
}

// record is the audit record of the tunnel's stream, once it has ended
// with outcome after moving the given bytes.
func (t *tunnel) record(door, outcome string, toService, fromService int64) audit.Record {
	detail := map[string]any{"service": t.target.Service, "request": t.requestID, "bytes_to_service": toService, "bytes_from_service": fromService,
		"duration_ms": time.Since(t.Opened).Milliseconds(), "door": door, "auth": t.caller.via}
	if t.Relay != "" {
		// Forwarded: the agent is connected to that relay of the cluster.
		detail["relay"] = t.Relay
	}
	if s := t.Session(); s != "" {
		detail["session"] = s
	}
	if len(t.Tries) > 0 {
		detail["tried"] = triedDetail(t.Tries)
	}
	return audit.Record{Kind: audit.Stream, Outcome: outcome, Tenant: t.target.Tenant, Agent: t.Agent, Backend: t.caller.name, Actor: t.caller.Identity(),
		Detail: detail}
}

// dial authenticates nothing: the front door has already. It authorizes c
// for target, picks an agent connection and opens a stream to the service
// under requestID, the id the door gave the request when it arrived.
// early, when not nil, sends the client's first bytes with the stream's
// opening (firstBytes).
func (fd *Server) dial(ctx context.Context, c *caller, addr, requestID string, early route.Early) (*tunnel, error) {
	t, err := route.ParseTarget(addr)
	if err != nil {
		return nil, err
	}
	if err := fd.authorize(ctx, c, t); err != nil {
		return nil, err
	}
	// The tenant's bulkheads: they count and refuse only its own streams.
	release, err := fd.cfg.Policy.AdmitStream(t.Tenant, c.name)
	if err != nil {
		fd.LimitRefusals.Add(1)
		fd.cfg.Metrics.LimitRefusals.WithLabelValues(t.Tenant, c.name).Inc()
		return nil, err
	}
	// The relay's memory cap, and the tenant's share of it while the
	// relay is busy: the stream is charged the worst case of any
	// transport until its carrier is known (streammem). The budget counts
	// the refusal (tether_stream_memory_refusals_total).
	charge, err := fd.cfg.Memory.Charge(t.Tenant, c.name)
	if err != nil {
		release()
		return nil, err
	}
	start := time.Now()
	hdr := protocol.StreamHeader{Service: t.Service, Backend: c.Identity(), RequestID: requestID}
	rt, err := fd.cfg.Router.Dial(ctx, t.Tenant, hdr, early)
	if err != nil {
		charge.Release()
		release()
		return nil, err
	}
	charge.Settle(rt.Stream)
	fd.cfg.Metrics.OpenDuration.Observe(time.Since(start).Seconds())
	fd.cfg.Metrics.StreamOpened(t.Tenant, t.Service, c.name, protocol.CodeOK)
	return &tunnel{Tunnel: rt, requestID: hdr.RequestID, target: t, caller: c, release: func() { release(); charge.Release() }}, nil
}

// auditRefusal records a stream the relay or the agent refused; one an
// agent refused names it and its session (or the relay of a forward),
// as the record of a stream it opened does. The
// record is queued, not waited for: a refusal is over (nothing was
// reached), and waiting for the audit commit held the client's answer
// for as long as the store took — up to the writer's 10 s per batch when
// it stalled, on top of the refusal itself. The record still reaches the
// store, or the audit file marked store_error when the store fails.
//
// The record is the tenant's (in the trail its operators read) only when
// c has a grant for some service of the tenant it asked for. A backend
// with no grant for the tenant could otherwise write into any tenant's
// trail by asking for its services; its refusal is recorded under no
// tenant (the relay's trail, which vendor operators read), with the
// target it asked for and the reason, as the metrics leave it
// unattributed.
func (fd *Server) auditRefusal(door, remote, requestID string, c *caller, addr string, err error) {
	if len(addr) > 512 {
		addr = addr[:512]
	}
	rec := audit.Record{Kind: audit.Stream, Outcome: protocol.CodeOf(err).String(), Backend: c.name, Actor: c.Identity(),
		Detail: map[string]any{"door": door, "remote": remote, "request": requestID, "target": addr, "auth": c.via, "error": err.Error()}}
	if by := route.RefusedBy(err); by != nil {
		// Answered by an agent (or the relay a forward went to): named
		// as in the record of a stream it opened (tunnel.record).
		if by.Relay != "" {
			rec.Detail["relay"] = by.Relay
		} else {
			rec.Agent = by.Agent
			if by.Session != "" {
				rec.Detail["session"] = by.Session
			}
		}
	}
	if tries := route.TriesOf(err); len(tries) > 0 {
		rec.Detail["tried"] = triedDetail(tries)
	}
	t, perr := route.ParseTarget(addr)
	if perr == nil {
		if c.grantedTenant(t.Tenant) {
			rec.Tenant = t.Tenant
		}
		rec.Detail["service"] = t.Service
	}
	fd.cfg.Metrics.StreamOpened(t.Tenant, t.Service, c.name, protocol.CodeOf(err))
	fd.cfg.Audit.Record(rec)
}

// triedDetail is the detail "tried" of a stream record: where the relay
// tried the stream before it opened or was refused, one object per
// failed attempt in order, with the agent and session of a connection to
// this relay or the relay of a forward, the attempt's duration_ms and
// its error. The router bounds their number (its maxAttempts) and the
// errors' length.
func triedDetail(tries []route.Try) []map[string]any {
	out := make([]map[string]any, len(tries))
	for i, t := range tries {
		m := map[string]any{"duration_ms": t.Took.Milliseconds(), "error": t.Err}
		if t.Relay != "" {
			m["relay"] = t.Relay
		} else {
			m["agent"] = t.Agent
			if t.Session != "" {
				m["session"] = t.Session
			}
		}
		out[i] = m
	}
	return out
}

// auditUnauthenticated records a front-door connection whose credentials
// were refused. The name it claimed is kept apart from Backend, which only
// ever holds an authenticated identity. Queued, as auditRefusal's.
func (fd *Server) auditUnauthenticated(door, remote, requestID, claimed string, err error) {
	if len(claimed) > 255 {
		claimed = claimed[:255]
	}
	fd.cfg.Metrics.StreamOpened("", "", "", protocol.CodeOf(err))
	fd.cfg.Audit.Record(audit.Record{Kind: audit.Stream, Outcome: protocol.CodeOf(err).String(), Actor: "unauthenticated",
		Detail: map[string]any{"door": door, "remote": remote, "request": requestID, "claimed_backend": claimed, "error": err.Error()}})
}

// doorOf finds the front door's name in a stream's log attributes.
func doorOf(attrs []any) string {
	for i := 0; i+1 < len(attrs); i += 2 {
		if attrs[i] == "door" {
			if s, ok := attrs[i+1].(string); ok {
				return s
			}
		}
	}
	return ""
}

// bridge copies between a front-door connection and a tunnel until both
// directions end, then releases the tunnel. attrs, the door's log
// attributes, carry the request id. The bytes are counted as they move
// (metrics.Bytes), not only when the stream ends. Its bulk copies share
// the tenant's copy slots (fairshare.go).
func (fd *Server) bridge(front transport.Stream, t *tunnel, attrs []any) {
	flow := fd.cfg.Metrics.Bytes.Open(t.target.Tenant, t.Agent)
	gate, done := fd.shares.take(t.target.Tenant)
	res, err := transport.SpliceWith(front, fd.throttle(t.target.Tenant, t.Stream),
		transport.SpliceOptions{Idle: fd.cfg.IdleTimeout, Counter: &flow.Counter, Gate: gate, Early: int64(t.early)})
	done()
	fd.cfg.Metrics.Bytes.Close(flow)
	t.End()
	t.release()
	outcome := audit.OutcomeOK
	if errors.Is(err, transport.ErrIdle) {
		outcome = "idle_timeout"
	} else if err != nil && !transport.IsClosedErr(err) {
		outcome = "error"
	}
	// The stream is over: its record need not hold this goroutine.
	fd.cfg.Audit.Record(t.record(doorOf(attrs), outcome, res.AToB, res.BToA))
	attrs = with(attrs, "agent", t.Agent) // attrs carry the request id already
	if t.Relay != "" {
		attrs = with(attrs, "relay", t.Relay)
	}
	log := fd.log
	attrs = with(attrs, "bytes_to_service", res.AToB, "bytes_from_service", res.BToA, "duration", time.Since(t.Opened).Round(time.Microsecond))
	switch {
	case errors.Is(err, transport.ErrIdle):
		log.Info("stream closed: idle timeout", attrs...)
	case err != nil && !transport.IsClosedErr(err):
		log.Info("stream ended with error", append(attrs, "err", err)...)
	default:
		log.Debug("stream closed", attrs...)
	}
}

// connSet tracks open front-door connections so that shutdown can wait for
// them and then close them.
type connSet struct {
	mu    sync.Mutex // guards conns and empty
	conns map[net.Conn]struct{}
	empty chan struct{} // closed while conns is empty; replaced when it fills
}

func newConnSet() *connSet {
	e := make(chan struct{})
	close(e)
	return &connSet{conns: make(map[net.Conn]struct{}), empty: e}
}

func (s *connSet) add(c net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.conns) == 0 {
		s.empty = make(chan struct{})
	}
	s.conns[c] = struct{}{}
}

func (s *connSet) remove(c net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.conns[c]; !ok {
		return
	}
	delete(s.conns, c)
	if len(s.conns) == 0 {
		close(s.empty)
	}
}

func (s *connSet) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

func (s *connSet) waitEmpty(d time.Duration) bool {
	s.mu.Lock()
	e := s.empty
	s.mu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-e:
		return true
	case <-t.C:
		return false
	}
}

// closeAll resets every connection of s (cut), each on a goroutine of
// its own and without s's lock held, as the tunnels ending meanwhile take
// the lock to remove themselves. The connections stay in s until their
// handlers remove them; wait for that with waitEmpty.
func (s *connSet) closeAll() {
	s.mu.Lock()
	conns := slices.Collect(maps.Keys(s.conns))
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() { cut(c) })
	}
	wg.Wait()
}

// cut closes a front-door connection whose tunnel the relay ends before
// its two sides did (the drain at shutdown is over) with a TCP reset,
// as the bridge ends a tunnel that failed or went idle: a FIN, or over
// TLS a close_notify, would tell the client that the service's answer
// ended cleanly, and a download cut part way would look complete. The
// TLS record layer is left alone: no close_notify is sent.
func cut(c net.Conn) { transport.Reset(c) }

// listenDoor listens on addr for a front door. Its connections are read
// and written with raw system calls from the first byte (transport.Direct):
// the SOCKS5 and CONNECT exchanges, the TLS under CONNECT-over-TLS, and
// then the splice.
func listenDoor(addr, door string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", door, err)
	}
	return transport.DirectListener(ln), nil
}
