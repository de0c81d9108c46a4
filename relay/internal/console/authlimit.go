package console

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/tetherhq/tether/relay/admin"
	"github.com/tetherhq/tether/relay/internal/audit"
	"github.com/tetherhq/tether/relay/internal/throttle"
)

// Failed authentication at the console's doors is throttled and audited
// (throttle): per source network (throttle.Source of the connection's
// address; behind a reverse proxy every request has the proxy's) and per
// identity claimed (an operator token's id, a certificate's serial, a
// person's subject). A source that has failed its burst is refused with
// 429 and Retry-After before its credentials are looked at; a credential
// that has failed its burst from any sources gets 429 instead of 401 for
// its next failures. Valid credentials are never counted, and a valid
// credential from a source that is not throttled is never refused. Every
// refusal is counted in tether_auth_refusals_total and summed in audit
// records (admin.KindAuthRefused): at most two per door, source and
// reason per interval.

// Doors of the console, as counted and audited.
const (
	doorAPI   = "admin_api" // the admin API and the dashboard's pages
	doorLogin = "login"     // POST /login
	doorSSO   = "sso"       // the single sign-on callback
)

// Reasons of failed authentication, as counted and audited.
const (
	reasonBadToken   = "bad_token"       // unknown, expired, revoked or malformed operator token
	reasonBadCert    = "bad_certificate" // refused operator certificate
	reasonBadSession = "bad_session"     // unknown or ended session
	reasonBadState   = "bad_state"       // a sign-on callback without its state (sso.go)
	reasonBadIDToken = "bad_id_token"    // the identity provider's answer did not verify
	reasonNoAccess   = "no_access"       // a person whose claims grant nothing
)

// authGuard throttles and audits failed authentication, and bounds the
// audit records of operators refused by their scope.
type authGuard struct {
	sources    *throttle.Limiter
	identities *throttle.Limiter
	tally      *throttle.Tally
	interval   time.Duration
	// scoped allows each operator (by actor) a burst of refusals by its
	// scope audited one by one; scopeTally sums the rest per operator
	// and outcome, so that a tenant's credential cannot fill the trail.
	scoped     *throttle.Limiter
	scopeTally *throttle.Tally
}

// defaultScopeRefusalBurst is how many refusals by its scope of one
// operator are audited one by one before they are summed (then one more
// every 5 s).
const defaultScopeRefusalBurst = 20

func newAuthGuard(cfg Config, adm *admin.Admin) *authGuard {
	record := func(sm throttle.Summary) {
		outcome := CodeUnauthenticated
		if sm.Reason == throttle.ReasonThrottled {
			outcome = CodeRateLimited
		}
		detail := map[string]any{"door": sm.Door, "source": sm.Source, "reason": sm.Reason, "count": sm.Count,
			"first": sm.First.UTC().Format(time.RFC3339Nano), "last": sm.Last.UTC().Format(time.RFC3339Nano)}
		if len(sm.Identities) > 0 {
			detail["identities"] = sm.Identities
		}
		if !sm.Opening {
			detail["summed"] = true
		}
		adm.RecordQueued(audit.Record{Kind: admin.KindAuthRefused, Outcome: outcome, Actor: "relay", Detail: detail})
	}
	// A sum of an operator's refusals by its scope goes into its
	// tenant's trail, as each refusal does (Server.auditRefusal).
	recordScoped := func(sm throttle.Summary) {
		detail := map[string]any{"count": sm.Count, "first": sm.First.UTC().Format(time.RFC3339Nano), "last": sm.Last.UTC().Format(time.RFC3339Nano),
			"requests": sm.Identities}
		if !sm.Opening {
			detail["summed"] = true
		}
		adm.RecordQueued(audit.Record{Kind: admin.KindOperatorRefused, Outcome: sm.Reason, Tenant: sm.Tenant, Actor: sm.Source, Detail: detail})
	}
	return &authGuard{
		sources:    throttle.New(cfg.Throttle),
		identities: throttle.New(cfg.Throttle),
		tally:      throttle.NewTally(throttle.TallyConfig{Record: record, Refusals: cfg.AuthRefusals, Now: cfg.Now}),
		interval:   cfg.AuthAuditInterval,
		scoped:     throttle.New(cfg.ScopeRefusals),
		scopeTally: throttle.NewTally(throttle.TallyConfig{Record: recordScoped, Now: cfg.Now}),
	}
}

// scopeRefused reports whether the refusal by its scope of the operator
// actor (of tenant) may be audited on its own; if not, it is summed with
// the operator's others of the interval, naming request ("METHOD path").
func (g *authGuard) scopeRefused(tenant, actor, code, request string) bool {
	if g.scoped.Take(actor) == 0 {
		return true
	}
	g.scopeTally.AddFor(tenant, doorAPI, actor, code, request)
	return false
}

// source is the throttling key of req's source.
func (g *authGuard) source(req *http.Request) string { return throttle.Source(req.RemoteAddr) }

// admit refuses an attempt at door from src while src is throttled.
func (g *authGuard) admit(door, src string) *APIError {
	if w := g.sources.Wait(src); w > 0 {
		g.tally.Add(door, src, throttle.ReasonThrottled, "")
		return rateLimited(w)
	}
	return nil
}

// failed counts a failed attempt at door from src and returns the error
// to answer: f's own, or 429 when src or the identity claimed has no
// attempts left. Failures that are not about a credential (none given, a
// CSRF check, the store) are neither counted nor audited.
func (g *authGuard) failed(door, src string, f failure) *APIError {
	if f.reason == "" {
		return f.err
	}
	w := g.sources.Take(src)
	if f.identity != "" {
		w = max(w, g.identities.Take(f.identity))
	}
	g.tally.Add(door, src, f.reason, f.identity)
	if w > 0 {
		return rateLimited(w)
	}
	return f.err
}

// refusedPerson counts a person refused at door (a verified identity
// whose claims grant nothing) against src and the person: nil when the
// door may audit the refusal on its own, or 429 when either has failed
// too often lately, the refusal then summed with the others.
func (g *authGuard) refusedPerson(door, src, identity string) *APIError {
	w := max(g.sources.Take(src), g.identities.Take(identity))
	if w > 0 {
		g.tally.Add(door, src, reasonNoAccess, identity)
		return rateLimited(w)
	}
	g.tally.Count(door, reasonNoAccess)
	return nil
}

func rateLimited(wait time.Duration) *APIError {
	e := apiErrorf(http.StatusTooManyRequests, CodeRateLimited, "too many failed authentications: try again in %s", wait.Round(time.Second))
	e.RetryAfter = wait
	return e
}

// run keeps the tallies and the limiters until ctx ends.
func (g *authGuard) run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { g.scopeTally.Keep(ctx, g.interval, g.scoped) })
	g.tally.Keep(ctx, g.interval, g.sources, g.identities)
	wg.Wait()
}
