package frontdoor

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"sync"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/relay/internal/audit"
	"github.com/tetherhq/tether/relay/internal/throttle"
)

// Failed authentication at the front doors (SOCKS5, CONNECT and CONNECT
// over TLS, which share the backends' credentials and so one guard) is
// throttled, as at the console (throttle):
// per source (throttle.Source of the connection's address) and per
// identity claimed (the backend name given with an API key, or the SPIFFE
// ID of a client certificate). Every credential is checked first: a
// valid one is never counted and never refused for a throttled source or
// identity, so a backend keeps working while someone guesses at its name,
// even from the same address (behind the same NAT). A failure once its
// source or identity has spent its burst is answered rate_limited (CONNECT:
// 429 with Retry-After; SOCKS5: after the RFC 1929 exchange, whose status
// cannot say why, the reply 0x01) instead of unauthenticated. Requests
// without any credential are not counted (a client may try without
// first, as curl does until it is asked). Every refusal is counted in
// tether_auth_refusals_total. A source's first refusals are logged and
// audited one by one with why, as many as its failures may be (10, then
// one every 5 s); beyond that, refusals are summed in audit records
// (audit.AuthRefused), at most two per door, source and reason per
// interval, so that a flood writes a bounded number of records.

// Reasons of refused front-door authentication, as counted and audited
// (the console's vocabulary where it applies).
const (
	reasonBadKey         = "bad_key"         // unknown backend or wrong API key
	reasonBadToken       = "bad_token"       // bearer token refused
	reasonBadCertificate = "bad_certificate" // client certificate naming no registered backend
	reasonNoCredentials  = "no_credentials"  // none, or two at once: not counted against the source
	reasonInternal       = "internal"        // the relay could not check the credential: not counted
)

// Defaults of the guard's audit interval and logging.
const (
	defaultAuthAuditInterval = time.Minute
	logBurst                 = 10
	logEvery                 = 5 * time.Second
)

// authRefusal is a refused authentication: the refusal answered (the
// credential's own, or rate_limited), why it was refused and the identity
// claimed. It unwraps to the *protocol.Error answered.
type authRefusal struct {
	err      *protocol.Error
	reason   string
	identity string
	// wait, for a rate_limited refusal, is how long until the source and
	// the identity may try again.
	wait time.Duration
}

func (r *authRefusal) Error() string { return r.err.Error() }
func (r *authRefusal) Unwrap() error { return r.err }

// retryAfter is how many whole seconds a refusal asks the client to wait
// (Retry-After), 0 for none.
func retryAfter(err error) int {
	var ar *authRefusal
	if !errors.As(err, &ar) || ar.wait <= 0 {
		return 0
	}
	return int(math.Ceil(ar.wait.Seconds()))
}

// authGuard throttles, logs and audits refused authentication.
type authGuard struct {
	sources    *throttle.Limiter // failures per source
	identities *throttle.Limiter // failures per identity claimed
	logs       *throttle.Limiter // refusals logged at info level, per source
	tally      *throttle.Tally
	// streams sums the refused streams of the forwards beyond their
	// source's log budget (refusedForward): a forward asks nothing of
	// its client, so its refusals are as anonymous as a failed
	// authentication.
	streams  *throttle.Tally
	interval time.Duration
}

func newAuthGuard(cfg Config) *authGuard {
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	lim := cfg.Throttle
	if lim.Now == nil {
		lim.Now = now
	}
	record := func(sm throttle.Summary) {
		outcome := protocol.CodeUnauthenticated
		switch sm.Reason {
		case throttle.ReasonThrottled:
			outcome = protocol.CodeRateLimited
		case reasonInternal:
			outcome = protocol.CodeInternal
		}
		if cfg.Audit != nil {
			cfg.Audit.Record(audit.Record{At: now(), Kind: audit.AuthRefused, Outcome: outcome.String(), Actor: "relay", Detail: sm.Detail()})
		}
	}
	tc := throttle.TallyConfig{Record: record, Now: now}
	if cfg.Metrics != nil {
		tc.Refusals = cfg.Metrics.AuthRefusals
	}
	interval := cfg.AuthAuditInterval
	if interval <= 0 {
		interval = defaultAuthAuditInterval
	}
	// A summed record of refused forward streams is a stream record of
	// the forward's tenant (whose trail has the first ones one by one),
	// with its count, as the auth.refused records have theirs.
	recordStreams := func(sm throttle.Summary) {
		if cfg.Audit == nil {
			return
		}
		rec := audit.Record{At: now(), Kind: audit.Stream, Outcome: sm.Reason, Tenant: sm.Tenant, Actor: "relay", Detail: sm.Detail()}
		if len(sm.Identities) == 1 {
			rec.Backend = sm.Identities[0]
		}
		cfg.Audit.Record(rec)
	}
	return &authGuard{
		sources:    throttle.New(lim),
		identities: throttle.New(lim),
		logs:       throttle.New(throttle.Config{Burst: logBurst, Every: logEvery, Now: now}),
		tally:      throttle.NewTally(tc),
		streams:    throttle.NewTally(throttle.TallyConfig{Record: recordStreams, Now: now}),
		interval:   interval,
	}
}

// counted reports whether a refusal for reason spends its source's and
// identity's attempts.
func counted(reason string) bool {
	return reason != reasonNoCredentials && reason != reasonInternal
}

// refused turns err, the refusal of a credential of the kind reason names
// claiming identity, into the refusal to answer (an *authRefusal), having
// counted it against its source (remote, an address as host:port) and
// identity: rate_limited when either has no attempts left. A refusal that
// says the relay could not check the credential (internal) is not the
// caller's failure and is not counted. A nil err is returned as nil.
func (g *authGuard) refused(remote, reason, identity string, err error) error {
	if err == nil {
		return nil
	}
	var pe *protocol.Error
	if !errors.As(err, &pe) {
		pe = protocol.Errorf(protocol.CodeInternal, "%v", err)
	}
	if pe.Code == protocol.CodeInternal {
		reason = reasonInternal
	}
	identity = protocol.Clip(identity, 255)
	r := &authRefusal{err: pe, reason: reason, identity: identity}
	if !counted(reason) {
		return r
	}
	w := g.sources.Take(throttle.Source(remote))
	if identity != "" {
		w = max(w, g.identities.Take(identity))
	}
	if w > 0 {
		r.wait = w
		r.reason = throttle.ReasonThrottled
		r.err = protocol.Errorf(protocol.CodeRateLimited, "too many failed authentications from this address or for this backend: try again in %s", max(w.Round(time.Second), time.Second))
	}
	return r
}

// refusedAuth logs and audits the refusal of the credential of request
// requestID (err, from refused) at door. A source's first refusals (as
// many as its failures may be: 10, then one every 5 s) are logged at info
// level and audited one by one, with why (auditUnauthenticated); the rest,
// and every rate_limited one, are logged at debug level and summed per
// door, source and reason in auth.refused records. Every refusal is
// counted in tether_auth_refusals_total.
func (fd *Server) refusedAuth(ctx context.Context, door, remote, requestID, claimed string, err error, attrs []any) {
	src := throttle.Source(remote)
	reason, identity := protocol.CodeOf(err).String(), protocol.Clip(claimed, 255)
	var ar *authRefusal
	if errors.As(err, &ar) {
		reason, identity = ar.reason, ar.identity
	}
	attrs = with(attrs, "code", protocol.CodeOf(err).String(), "err", err)
	if !errors.Is(err, protocol.ErrRateLimited) && fd.guard.logs.Take(src) == 0 {
		fd.log.Info("refused", attrs...)
		fd.guard.tally.Count(door, reason)
		fd.auditUnauthenticated(door, remote, requestID, claimed, err)
		return
	}
	fd.log.Log(ctx, slog.LevelDebug, "refused", attrs...)
	if fd.cfg.Metrics != nil {
		fd.cfg.Metrics.StreamOpened("", "", "", protocol.CodeOf(err))
	}
	fd.guard.tally.Add(door, src, reason, identity)
}

// run keeps the tallies and the limiters until ctx ends.
func (g *authGuard) run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { g.streams.Keep(ctx, g.interval) })
	g.tally.Keep(ctx, g.interval, g.sources, g.identities, g.logs)
	wg.Wait()
}

// throttled reports whether remote's source (host:port) has no failed
// attempts left for now, without spending one.
func (g *authGuard) throttled(remote string) bool {
	return g.sources.Wait(throttle.Source(remote)) > 0
}

// logged reports whether a refusal from remote (host:port) is within its
// source's log budget (10, then one every 5 s, shared by every refusal
// of the source at the front doors before or without authentication):
// such a refusal is logged at info level, the others at debug level.
func (g *authGuard) logged(remote string) bool {
	return g.logs.Take(throttle.Source(remote)) == 0
}
