package frontdoor

import (
	"context"
	"fmt"
	"net"
	"time"

	"golang.org/x/time/rate"

	"github.com/tetherhq/tether/protocol/transport"
	"github.com/tetherhq/tether/relay/internal/policy"
)

// throttle wraps a tunnel's stream in the bandwidth limit of its tenant,
// if it has one. A tenant without a limit gets the stream itself: its
// bytes take the same path as before, with nothing added per byte.
//
// The limiters are the tenant's on this relay (policy.BandwidthOf), shared
// by all its streams here; in a cluster each relay enforces the limit on
// the streams that enter through it, so a tenant whose backends use n
// relays at once may move up to n times its limit in all.
func (fd *Server) throttle(tenant string, s transport.Stream) transport.Stream {
	bw := fd.cfg.Policy.BandwidthOf(tenant)
	if bw == nil {
		return s
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &throttledStream{Stream: s, bw: bw, ctx: ctx, cancel: cancel}
}

// throttledStream is the agent's side of a tunnel under a bandwidth
// limit: what is written to it goes to the service and takes tokens of
// bw.ToService before it is written; what is read from it comes from the
// service and takes tokens of bw.FromService after it is read. Reads ask
// for at most a bucket's worth, so neither direction runs ahead of its
// limit by more than one burst (a tenth of a second). Waiting is a timer,
// not a loop: a throttled stream costs no CPU while it waits. Close and
// Abort end any wait at once.
type throttledStream struct {
	transport.Stream
	bw     *policy.Bandwidth
	ctx    context.Context // done once the stream is closed
	cancel context.CancelFunc
}

func (s *throttledStream) Write(p []byte) (int, error) {
	var total int
	for len(p) > 0 {
		n := min(len(p), burstOf(s.bw.ToService))
		if err := s.wait(s.bw.ToService, n); err != nil {
			return total, err
		}
		w, err := s.Stream.Write(p[:n])
		total += w
		if err != nil {
			return total, err
		}
		p = p[n:]
	}
	return total, nil
}

func (s *throttledStream) Read(p []byte) (int, error) {
	if b := burstOf(s.bw.FromService); len(p) > b {
		p = p[:b]
	}
	n, err := s.Stream.Read(p)
	if n > 0 {
		if werr := s.wait(s.bw.FromService, n); werr != nil {
			return n, werr
		}
	}
	return n, err
}

// wait takes n tokens of lim, in pieces no larger than its burst (which
// a change of the limit may have lowered since the caller sized n).
func (s *throttledStream) wait(lim *rate.Limiter, n int) error {
	for n > 0 {
		k := min(n, burstOf(lim))
		if err := lim.WaitN(s.ctx, k); err != nil {
			if s.ctx.Err() != nil {
				return fmt.Errorf("bandwidth limit: %w", net.ErrClosed)
			}
			return fmt.Errorf("bandwidth limit: %w", err)
		}
		n -= k
	}
	return nil
}

// burstOf is lim's burst, at least 1 (a lifted limit is rate.Inf, whose
// burst does not matter).
func burstOf(lim *rate.Limiter) int { return max(lim.Burst(), 1) }

func (s *throttledStream) Close() error {
	s.cancel()
	return s.Stream.Close()
}

// Abort resets the stream (transport.Aborter), ending any wait.
func (s *throttledStream) Abort() error {
	s.cancel()
	if a, ok := s.Stream.(transport.Aborter); ok {
		return a.Abort()
	}
	return s.Stream.Close()
}

// SetReadDeadline and SetWriteDeadline pass on to the stream, when it has
// them (the plain HTTP proxy sets them on its upstream connections).
func (s *throttledStream) SetReadDeadline(t time.Time) error {
	if d, ok := s.Stream.(interface{ SetReadDeadline(time.Time) error }); ok {
		return d.SetReadDeadline(t)
	}
	return fmt.Errorf("tunnel stream %T has no read deadline", s.Stream)
}

func (s *throttledStream) SetWriteDeadline(t time.Time) error {
	if d, ok := s.Stream.(interface{ SetWriteDeadline(time.Time) error }); ok {
		return d.SetWriteDeadline(t)
	}
	return fmt.Errorf("tunnel stream %T has no write deadline", s.Stream)
}
