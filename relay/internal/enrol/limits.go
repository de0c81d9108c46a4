package enrol

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/relay/internal/audit"
	"github.com/tetherhq/tether/relay/internal/throttle"
)

// Enrolment with a wrong join token is throttled as failed
// authentication is at the other doors (throttle): per source
// (throttle.Source of the connection's address) and per token id claimed.
// Every token is checked first: a valid one is never counted and never
// refused for a throttled source or id. A wrong token once its source or
// id has spent its burst is refused rate_limited instead of
// invalid_token. Refusals before a token was accepted (a wrong token, a
// malformed request) are counted in tether_auth_refusals_total{door=
// "enrol"}; a source's first ones (as many as its failures may be: 10,
// then one every 5 s) are audited one by one with why (agent.enrol), the
// rest summed in auth.refused records, at most two per source and reason
// per interval. A token that is expired or used up is refused as such, and
// never throttled, but it is no longer guarded as a secret (a single-use
// token is pasted into tickets and install logs once spent): its refusals
// are audited as those of wrong tokens are, a source's first one by one,
// the rest summed (in the token's tenant's trail). Refusals of a token
// that can still enrol (the tenant's limits) are audited one by one, since
// only the holder of a live token can cause them.
//
// Renewals are limited per agent: one is due once the agent's newest
// certificate is past half its life (agents renew at two thirds, counted
// from when they received it), and any other — the renewal a CA rotation
// asks for at once, a retry — spends one of a small burst (3, then one
// every 20 minutes). A renewal beyond is refused rate_limited; a renewal
// asked over a session whose certificate is no longer the agent's newest
// (policy.StandingOf) is refused certificate_superseded; one whose
// certificate request is refused (malformed, a key not accepted) is
// refused bad_request; one over a session whose certificate expired
// (until its next heartbeat closes it) is refused certificate_expired.
// All four are summed per agent and interval
// (agent.renew and agent.stale_certificate records) and counted in
// tether_auth_refusals_total{door="renew"}.

// Doors and reasons, as counted and audited.
const (
	doorEnrol = "enrol"
	doorRenew = "renew"

	reasonBadToken   = "bad_token"   // unknown or damaged join token, wrong secret, another CA's
	reasonBadRequest = "bad_request" // a malformed request or CSR: at enrolment before a token was accepted (not counted against the source); at renewal, a CSR refused
	reasonSuperseded = "superseded"  // a renewal over a session on a certificate no longer the newest
	reasonExpired    = "expired"     // a renewal over a session whose certificate expired (until its next heartbeat closes it)
)

// Defaults of the limits.
const (
	defaultAuditInterval = time.Minute
	defaultCertOverlap   = 5 * time.Minute
	defaultRenewBurst    = 3
	defaultRenewEvery    = 20 * time.Minute
	logBurst             = 10
	logEvery             = 5 * time.Second
)

// renewDueFraction is the part of its life past which an agent's newest
// certificate is due for renewal, as far as the relay is concerned. Agents
// renew at two thirds, counted from when they received the certificate;
// half leaves room for clocks that disagree.
const renewDueFraction = 0.5

// limits throttles and sums the refusals of enrolments and renewals.
type limits struct {
	sources  *throttle.Limiter // failed enrolments per source
	tokens   *throttle.Limiter // failed enrolments per token id
	renewals *throttle.Limiter // renewals not due, per agent
	logs     *throttle.Limiter // refusals logged at warning level, per source or agent
	tally    *throttle.Tally   // refused enrolments (auth.refused)
	renews   *throttle.Tally   // refused renewals (agent.renew, agent.stale_certificate)
	interval time.Duration
}

func newLimits(cfg Config) *limits {
	lim := cfg.Throttle
	if lim.Now == nil {
		lim.Now = cfg.Now
	}
	rl := cfg.RenewThrottle
	if rl.Burst <= 0 {
		rl.Burst = defaultRenewBurst
	}
	if rl.Every <= 0 {
		rl.Every = defaultRenewEvery
	}
	if rl.Now == nil {
		rl.Now = cfg.Now
	}
	record := func(sm throttle.Summary) {
		outcome := protocol.CodeInvalidToken.String()
		switch sm.Reason {
		case throttle.ReasonThrottled:
			outcome = protocol.CodeRateLimited.String()
		case reasonBadRequest:
			outcome = protocol.CodeBadRequest.String()
		case protocol.CodeTokenExpired.String(), protocol.CodeTokenUsedUp.String():
			outcome = sm.Reason
		}
		cfg.Audit.Record(audit.Record{At: cfg.Now(), Kind: audit.AuthRefused, Outcome: outcome, Tenant: sm.Tenant, Actor: "relay", Detail: sm.Detail()})
	}
	recordRenew := func(sm throttle.Summary) {
		kind, outcome := audit.Renew, protocol.CodeRateLimited
		switch sm.Reason {
		case reasonSuperseded:
			kind, outcome = audit.StaleCertificate, protocol.CodeCertSuperseded
		case reasonBadRequest:
			outcome = protocol.CodeBadRequest
		case reasonExpired:
			outcome = protocol.CodeCertExpired
		}
		tenant, agent, _ := strings.Cut(sm.Source, "/")
		cfg.Audit.Record(audit.Record{At: cfg.Now(), Kind: kind, Outcome: outcome.String(), Tenant: tenant, Agent: agent, Actor: "agent", Detail: sm.Detail()})
	}
	interval := cfg.AuditInterval
	if interval <= 0 {
		interval = defaultAuditInterval
	}
	return &limits{
		sources:  throttle.New(lim),
		tokens:   throttle.New(lim),
		renewals: throttle.New(rl),
		logs:     throttle.New(throttle.Config{Burst: logBurst, Every: logEvery, Now: cfg.Now}),
		tally:    throttle.NewTally(throttle.TallyConfig{Record: record, Refusals: cfg.Refusals, Now: cfg.Now}),
		renews:   throttle.NewTally(throttle.TallyConfig{Record: recordRenew, Refusals: cfg.Refusals, Now: cfg.Now}),
		interval: interval,
	}
}

// unauthenticatedEnrolment classifies an enrolment refused before a
// token was accepted, or for a token expired or used up: the reason it is
// counted under and whether it counts against its source and token id; ok
// is false for any other outcome (a refusal of a live token, for the
// tenant's limits, is audited on its own).
func unauthenticatedEnrolment(err error) (reason string, counts, ok bool) {
	switch c := protocol.CodeOf(err); c {
	case protocol.CodeInvalidToken:
		return reasonBadToken, true, true
	case protocol.CodeBadRequest:
		return reasonBadRequest, false, true
	case protocol.CodeTokenExpired, protocol.CodeTokenUsedUp:
		// A spent token authenticates nothing any more: summed as a
		// wrong one is, under its own code, and answered as such.
		return c.String(), false, true
	}
	return "", false, false
}

// refusedEnrolment counts a refused enrolment from src claiming token id
// (or "") and returns the reason to sum it under and the refusal to
// answer: err, or rate_limited once the source or the token id has failed
// too often lately.
func (l *limits) refusedEnrolment(src, id, reason string, counts bool, err error) (string, error) {
	if !counts {
		return reason, err
	}
	w := l.sources.Take(src)
	if id != "" {
		w = max(w, l.tokens.Take(id))
	}
	if w == 0 {
		return reason, err
	}
	return throttle.ReasonThrottled, protocol.Errorf(protocol.CodeRateLimited,
		"too many enrolments with a wrong join token from this address or for this token lately: try again in %s", max(w.Round(time.Second), time.Second))
}

// agentKey is how an agent is named in renewal summaries: tenant/id.
func agentKey(tenant, id string) string { return tenant + "/" + id }

// renewRefusal is a renewal refused for a reason summed per agent.
type renewRefusal struct {
	err    *protocol.Error
	reason string
}

func (r *renewRefusal) Error() string { return r.err.Error() }
func (r *renewRefusal) Unwrap() error { return r.err }

// refuseRenewal is the renewal refusal err, summed under reason.
func refuseRenewal(reason string, err error) error {
	var pe *protocol.Error
	if !errors.As(err, &pe) {
		pe = protocol.Errorf(protocol.CodeInternal, "%v", err)
	}
	return &renewRefusal{err: pe, reason: reason}
}

// Run writes the summed refusals and tidies the limiters every interval
// until ctx ends, then writes what is left. Enrolments and renewals work
// without it, but their summed refusals are only written by it.
func (e *Enrol) Run(ctx context.Context) error {
	l := e.limits
	t := time.NewTicker(l.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			l.tally.Flush()
			l.renews.Flush()
			return nil
		case <-t.C:
			l.tally.Flush()
			l.renews.Flush()
			for _, lim := range []*throttle.Limiter{l.sources, l.tokens, l.renewals, l.logs} {
				lim.Tidy()
			}
		}
	}
}
