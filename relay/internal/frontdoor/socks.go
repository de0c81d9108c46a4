package frontdoor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/transport"
	"github.com/tetherhq/tether/relay/internal/credential"
	"github.com/tetherhq/tether/relay/internal/socks5"
	"github.com/tetherhq/tether/relay/internal/throttle"
)

func (fd *Server) acceptSOCKS(ctx context.Context, wg *sync.WaitGroup) error {
	var backoff throttle.AcceptBackoff
	for {
		c, err := fd.socksLn.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return nil
			}
			if backoff.Retry(ctx, err, fd.log, "SOCKS5 listener") || ctx.Err() != nil {
				continue
			}
			return fmt.Errorf("accept SOCKS5 connection: %w", err)
		}
		backoff.Accepted()
		leave, ok := fd.src.Enter(c.RemoteAddr())
		if !ok {
			fd.SourceLimited.Add(1)
			fd.log.Debug("front-door connection closed: too many unauthenticated connections from its address or network", "door", "socks5", "remote", c.RemoteAddr().String())
			c.Close()
			continue
		}
		fd.front.add(c)
		wg.Go(func() {
			defer fd.front.remove(c)
			fd.serveSOCKS(ctx, c, leave)
		})
	}
}

// serveSOCKS serves one SOCKS5 connection; authenticated is called once
// the handshake is over (it uncounts the connection from its source's
// bound on unauthenticated connections).
func (fd *Server) serveSOCKS(ctx context.Context, c net.Conn, authenticated func()) {
	// Per-stream attributes are passed to each log call rather than bound
	// with Logger.With, which formats them up front: on the stream-open
	// path that cost more than the log lines ever written.
	// SOCKS5 has no header to carry the request id: the relay's log and
	// audit record carry it, and the agent's access log.
	id := credential.NewRequestID()
	attrs := []any{"door", "socks5", "request", id, "remote", c.RemoteAddr().String()}
	c.SetDeadline(time.Now().Add(fd.cfg.HandshakeTimeout))
	var who *caller
	var authErr error
	var claimed string
	req, err := socks5.Handshake(c, func(user, pass string) bool {
		claimed = user
		who, authErr = fd.authenticate(ctx, c.RemoteAddr().String(), user, pass)
		authErr = fd.guard.refused(c.RemoteAddr().String(), reasonBadKey, user, authErr)
		// RFC 1929's status cannot say why: a throttled attempt is let
		// past it, and its request answered with rate_limited's reply.
		return authErr == nil || errors.Is(authErr, protocol.ErrRateLimited)
	})
	authenticated()
	if authErr != nil {
		if err == nil {
			socks5.WriteReply(c, socksReply(protocol.CodeOf(authErr)), nil)
		}
		fd.refusedAuth(ctx, "socks5", c.RemoteAddr().String(), id, claimed, authErr, attrs)
		c.Close()
		return
	}
	if err != nil {
		fd.log.Debug("SOCKS5 handshake failed", with(attrs, "err", err)...)
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
	tun, err := fd.dial(ctx, who, target, id, nil)
	c.SetWriteDeadline(time.Now().Add(fd.cfg.HandshakeTimeout))
	if err != nil {
		fd.log.Info("refused", with(targetAttrs(attrs, target), "code", protocol.CodeOf(err).String(), "err", err)...)
		socks5.WriteReply(c, socksReply(protocol.CodeOf(err)), nil)
		c.Close()
		fd.auditRefusal("socks5", c.RemoteAddr().String(), id, who, target, err)
		return
	}
	if err := socks5.WriteReply(c, socks5.ReplySucceeded, nil); err != nil {
		fd.abandon(tun, "socks5", fmt.Errorf("answer the SOCKS5 request: %w", err))
		c.Close()
		fd.log.Info("stream closed before it was bridged", with(attrs, "err", err)...)
		return
	}
	c.SetDeadline(time.Time{})
	fd.bridge(c.(transport.Stream), tun, with(attrs, "tenant", tun.target.Tenant, "service", tun.target.Service))
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
	case protocol.CodeLimitExceeded, protocol.CodeRateLimited:
		return socks5.ReplyGeneralFailure
	}
	return socks5.ReplyGeneralFailure
}
