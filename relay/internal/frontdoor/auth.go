package frontdoor

import (
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/go-jose/go-jose/v4"
	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/relay/internal/atomicfile"
	"github.com/tetherhq/tether/relay/internal/credential"
	"github.com/tetherhq/tether/relay/internal/policy"
	"github.com/tetherhq/tether/relay/internal/route"
	"github.com/tetherhq/tether/relay/internal/store"
)

// authenticateCertificate turns a client certificate, which the TLS
// handshake verified (trust.Server.Front refuses any other), into a caller:
// the backend it names must still exist, and the certificate must be one
// the relay issued to it and did not revoke (recorded with the backend, so
// that a backend removed and added again does not get back the
// certificates of the one removed).
func (fd *Server) authenticateCertificate(ctx context.Context, certs []*x509.Certificate) (*caller, error) {
	leaf := certs[0]
	id, err := identity.BackendFromCertificate(leaf, fd.cfg.Authority.TrustDomain())
	if err != nil {
		return nil, protocol.Errorf(protocol.CodeUnauthenticated, "backend certificate refused: %v", err)
	}
	b, err := fd.registeredBackend(ctx, id.Name, false)
	if err == nil && !certIssuedTo(b, leaf) {
		// The backend may have been read before the certificate was
		// issued (the change feed had not told yet): a certificate it does
		// not list is checked against the store itself.
		b, err = fd.registeredBackend(ctx, id.Name, true)
	}
	if err != nil {
		return nil, err
	}
	if !certIssuedTo(b, leaf) {
		serial := leaf.SerialNumber.Text(16)
		if b.CertsUnrecorded {
			return nil, protocol.Errorf(protocol.CodeUnauthenticated, "backend certificate %s was issued before backend %q was added (to a backend of that name since removed): issue a new one with tether-relay backend certificate", serial, b.Name)
		}
		return nil, protocol.Errorf(protocol.CodeUnauthenticated, "backend certificate %s is not one issued to backend %q (revoked, issued to a backend of that name since removed, or issued before the relay recorded backend certificates): issue a new one with tether-relay backend certificate", serial, b.Name)
	}
	return &caller{name: b.Name, grants: b.Grants, via: viaCertificate}, nil
}

// certBackdate is how far before its issue a certificate's NotBefore is
// set (ca.signClient), for clock skew.
const certBackdate = 5 * time.Minute

// certIssuedTo reports whether leaf, a certificate naming backend b, was
// issued to b: its serial is recorded with b, or, for a backend added
// before certificates were recorded (whose certificates from then are
// not), it was issued after b was added.
func certIssuedTo(b store.Backend, leaf *x509.Certificate) bool {
	if _, ok := slices.BinarySearch(b.CertSerials, leaf.SerialNumber.Text(16)); ok {
		return true
	}
	return b.CertsUnrecorded && !leaf.NotBefore.Add(certBackdate).Before(b.CreatedAt)
}

// registeredBackend looks up a backend by name: from the cache, or from
// the store when fresh. A backend that does not exist is refused as
// unauthenticated.
func (fd *Server) registeredBackend(ctx context.Context, name string, fresh bool) (store.Backend, error) {
	get := fd.backends.get
	if fresh {
		get = fd.backends.reload
	}
	b, err := get(ctx, name, fd.loadBackend)
	if errors.Is(err, store.ErrNotFound) {
		return store.Backend{}, protocol.Errorf(protocol.CodeUnauthenticated, "backend %q is not registered with this relay", name)
	}
	if err != nil {
		return store.Backend{}, fd.lookupFailed(ctx, "backend", err)
	}
	return b, nil
}

// registeredCaller looks up a backend authenticated by a bearer token,
// which carries its name but no API key.
func (fd *Server) registeredCaller(ctx context.Context, name, via string, tenants []string) (*caller, error) {
	b, err := fd.registeredBackend(ctx, name, false)
	if err != nil {
		return nil, err
	}
	return &caller{name: b.Name, grants: b.Grants, via: via, tenants: tenants}, nil
}

// OIDCConfig lets backends authenticate with a bearer token (a JWT) from
// an OpenID Connect issuer.
type OIDCConfig struct {
	// Issuer is the issuer URL; tokens must carry it as "iss". Setting it
	// turns bearer tokens on.
	Issuer string
	// Audience must be one of the token's "aud" values. Required.
	Audience string
	// JWKSURL is where the issuer publishes its signing keys. Default: the
	// jwks_uri of the issuer's discovery document.
	JWKSURL string
	// BackendClaim names the claim holding the backend's name, which must
	// be a registered backend: its grants apply. Default "sub".
	BackendClaim string
	// TenantClaim names the claim listing the tenants the token is for (a
	// string or an array of strings; "*" for all). A token without it is
	// refused. Default "tether_tenants".
	TenantClaim string
}

// SetDefaults fills in the defaults of unset fields.
func (c *OIDCConfig) SetDefaults() {
	if c.BackendClaim == "" {
		c.BackendClaim = "sub"
	}
	if c.TenantClaim == "" {
		c.TenantClaim = "tether_tenants"
	}
}

// Validate reports what is wrong with c.
func (c *OIDCConfig) Validate() error {
	if c.Issuer == "" {
		if c.Audience != "" || c.JWKSURL != "" {
			return errors.New("OIDC audience or JWKS URL set without an issuer")
		}
		return nil
	}
	if !strings.HasPrefix(c.Issuer, "https://") && !strings.HasPrefix(c.Issuer, "http://") {
		return fmt.Errorf("OIDC issuer %q is not an http(s) URL", c.Issuer)
	}
	if c.Audience == "" {
		return errors.New("OIDC audience is required with an issuer")
	}
	return nil
}

// bearerAuth verifies bearer tokens against an issuer's keys.
type bearerAuth struct {
	cfg      OIDCConfig
	verifier *oidc.IDTokenVerifier
	keys     *keyCache
}

// signingAlgs are the JWS algorithms accepted; "none" and HMAC never are.
var signingAlgs = []string{
	oidc.RS256, oidc.RS384, oidc.RS512, oidc.ES256, oidc.ES384, oidc.ES512, oidc.PS256, oidc.PS384, oidc.PS512, oidc.EdDSA,
}

func newBearerAuth(cfg OIDCConfig, cacheFile string, now func() time.Time, client *http.Client) *bearerAuth {
	keys := &keyCache{issuer: cfg.Issuer, jwksURL: cfg.JWKSURL, file: cacheFile, client: client, now: now}
	keys.load()
	return &bearerAuth{
		cfg:  cfg,
		keys: keys,
		verifier: oidc.NewVerifier(cfg.Issuer, keys, &oidc.Config{
			ClientID: cfg.Audience, SupportedSigningAlgs: signingAlgs, Now: now,
		}),
	}
}

// authenticateBearer verifies a token and returns the backend it names,
// narrowed to the tenants the token lists.
func (fd *Server) authenticateBearer(ctx context.Context, token string) (*caller, error) {
	if fd.bearer == nil {
		return nil, protocol.Errorf(protocol.CodeUnauthenticated, "bearer tokens are not accepted by this relay (no OIDC issuer configured): use an API key")
	}
	b := fd.bearer
	tok, err := b.verifier.Verify(ctx, token)
	if err != nil {
		var exp *oidc.TokenExpiredError
		if errors.As(err, &exp) {
			return nil, protocol.Errorf(protocol.CodeUnauthenticated, "bearer token expired at %s", exp.Expiry.UTC().Format(time.RFC3339))
		}
		return nil, protocol.Errorf(protocol.CodeUnauthenticated, "bearer token refused: %v", strings.TrimPrefix(err.Error(), "oidc: "))
	}
	var claims map[string]json.RawMessage
	if err := tok.Claims(&claims); err != nil {
		return nil, protocol.Errorf(protocol.CodeUnauthenticated, "bearer token claims: %v", err)
	}
	var name string
	if raw, ok := claims[b.cfg.BackendClaim]; !ok || json.Unmarshal(raw, &name) != nil || name == "" {
		return nil, protocol.Errorf(protocol.CodeUnauthenticated, "bearer token has no string claim %q naming the backend", b.cfg.BackendClaim)
	}
	if err := identity.ValidateName("backend", name); err != nil {
		return nil, protocol.Errorf(protocol.CodeUnauthenticated, "bearer token claim %q: %v", b.cfg.BackendClaim, err)
	}
	tenants, err := tenantClaim(claims[b.cfg.TenantClaim])
	if err != nil {
		return nil, protocol.Errorf(protocol.CodeUnauthenticated, "bearer token claim %q: %v", b.cfg.TenantClaim, err)
	}
	if slices.Contains(tenants, store.Any) {
		tenants = nil // the grants alone decide
	}
	return fd.registeredCaller(ctx, name, viaJWT, tenants)
}

// tenantClaim parses the tenant claim: a tenant name, "*", or an array of
// them. It must be present and name at least one tenant.
func tenantClaim(raw json.RawMessage) ([]string, error) {
	if raw == nil {
		return nil, errors.New("missing: the token names no tenant")
	}
	var one string
	var many []string
	if err := json.Unmarshal(raw, &one); err == nil {
		many = []string{one}
	} else if err := json.Unmarshal(raw, &many); err != nil {
		return nil, errors.New("not a string or an array of strings")
	}
	if len(many) == 0 {
		return nil, errors.New("empty: the token names no tenant")
	}
	for _, t := range many {
		if t == store.Any {
			continue
		}
		if err := identity.ValidateName("tenant", t); err != nil {
			return nil, err
		}
	}
	return many, nil
}

// keyCache holds an issuer's signing keys. It fetches them when a token
// names a key it does not have (at most once per keyRefetchInterval, so
// forged tokens cannot hammer the issuer) and when they are older than
// keyMaxAge; a failed fetch keeps the keys it had. The keys are also kept
// in a file, so a relay restarted while the issuer is down still accepts
// tokens signed with them.
type keyCache struct {
	issuer  string
	jwksURL string // discovered on first use when empty
	file    string
	client  *http.Client
	now     func() time.Time

	mu        sync.Mutex // guards the fields below; never held across a fetch
	keys      []jose.JSONWebKey
	fetched   time.Time     // last successful fetch
	attempted time.Time     // last attempt
	fetching  chan struct{} // closed when the fetch under way ends; nil when none
	fetchErr  error         // how the last fetch ended
}

const (
	keyRefetchInterval = 10 * time.Second
	keyMaxAge          = time.Hour
	keyFetchTimeout    = 5 * time.Second
	maxJWKSBytes       = 1 << 20
)

// errFetchedRecently: the keys were fetched moments ago; an unknown key is
// not worth asking the issuer again yet.
var errFetchedRecently = errors.New("the issuer's keys were fetched moments ago")

type cachedKeys struct {
	JWKSURL string          `json:"jwks_url"`
	Fetched time.Time       `json:"fetched"`
	Keys    json.RawMessage `json:"keys"` // the issuer's JWKS document
}

func (k *keyCache) load() {
	raw, err := os.ReadFile(k.file)
	if err != nil {
		return
	}
	var c cachedKeys
	var set jose.JSONWebKeySet
	if json.Unmarshal(raw, &c) != nil || json.Unmarshal(c.Keys, &set) != nil {
		return
	}
	if k.jwksURL == "" {
		k.jwksURL = c.JWKSURL
	}
	k.keys, k.fetched = set.Keys, c.Fetched
}

// VerifySignature implements oidc.KeySet.
func (k *keyCache) VerifySignature(ctx context.Context, token string) ([]byte, error) {
	jws, err := jose.ParseSignedCompact(token, toAlgs(signingAlgs))
	if err != nil {
		return nil, fmt.Errorf("malformed token: %w", err)
	}
	if len(jws.Signatures) != 1 {
		return nil, errors.New("token must carry exactly one signature")
	}
	kid := jws.Signatures[0].Header.KeyID
	keys, stale := k.current()
	if p, ok := verifyWith(jws, keys, kid); ok && !stale {
		return p, nil
	}
	fresh, ferr := k.refresh(ctx, !hasKey(keys, kid))
	if ferr == nil {
		keys = fresh
	}
	if p, ok := verifyWith(jws, keys, kid); ok {
		return p, nil
	}
	switch {
	case hasKey(keys, kid):
		return nil, errors.New("signature does not verify with the issuer's keys")
	case ferr != nil && !errors.Is(ferr, errFetchedRecently):
		return nil, fmt.Errorf("signing key %q is unknown and the issuer's keys cannot be fetched: %w", kid, ferr)
	}
	return nil, fmt.Errorf("signing key %q is not one of the issuer's keys", kid)
}

func (k *keyCache) current() ([]jose.JSONWebKey, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.keys, k.now().Sub(k.fetched) > keyMaxAge
}

func hasKey(keys []jose.JSONWebKey, kid string) bool {
	for _, key := range keys {
		if kid == "" || key.KeyID == kid {
			return true
		}
	}
	return false
}

func verifyWith(jws *jose.JSONWebSignature, keys []jose.JSONWebKey, kid string) ([]byte, bool) {
	for _, key := range keys {
		if kid != "" && key.KeyID != kid {
			continue
		}
		if key.Use != "" && key.Use != "sig" {
			continue
		}
		if p, err := jws.Verify(&key); err == nil {
			return p, true
		}
	}
	return nil, false
}

// refresh fetches the keys unless an attempt was made very recently. An
// unknown key id (unknownKey) justifies a fetch once per
// keyRefetchInterval; stale keys are refreshed as often. One fetch runs at
// a time, without the cache's lock, so that requests whose keys are
// cached never wait for the issuer: while it runs, a request for an
// unknown key waits for it (or its own ctx), one with stale keys goes on
// with them.
func (k *keyCache) refresh(ctx context.Context, unknownKey bool) ([]jose.JSONWebKey, error) {
	k.mu.Lock()
	if wait := k.fetching; wait != nil {
		keys := k.keys
		k.mu.Unlock()
		if !unknownKey {
			return keys, nil
		}
		select {
		case <-wait:
		case <-ctx.Done():
			return keys, ctx.Err()
		}
		k.mu.Lock()
		defer k.mu.Unlock()
		return k.keys, k.fetchErr
	}
	now := k.now()
	if now.Sub(k.attempted) < keyRefetchInterval {
		keys := k.keys
		k.mu.Unlock()
		if unknownKey {
			return keys, errFetchedRecently
		}
		return keys, nil
	}
	k.attempted = now
	done := make(chan struct{})
	k.fetching = done
	jwksURL := k.jwksURL
	k.mu.Unlock()

	// Bounded by keyFetchTimeout alone: the requests waiting for this
	// fetch do not fail because the one that started it went away.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), keyFetchTimeout)
	keys, raw, jwksURL, err := k.fetch(fctx, jwksURL)
	cancel()

	k.mu.Lock()
	k.jwksURL = jwksURL
	if err == nil {
		k.keys, k.fetched = keys, now
	}
	k.fetchErr = err
	k.fetching = nil
	close(done)
	keys = k.keys
	k.mu.Unlock()
	if err == nil {
		if b, err := json.Marshal(cachedKeys{JWKSURL: jwksURL, Fetched: now, Keys: raw}); err == nil {
			atomicfile.Write(k.file, b, 0o600) // best effort: only a restart during an outage needs it
		}
	}
	return keys, err
}

// fetch reads the issuer's key set from jwksURL, discovering it first when
// it is empty; it returns the URL it used.
func (k *keyCache) fetch(ctx context.Context, jwksURL string) (keys []jose.JSONWebKey, raw []byte, _ string, err error) {
	if jwksURL == "" {
		if jwksURL, err = k.discover(ctx); err != nil {
			return nil, nil, "", err
		}
	}
	if raw, err = k.get(ctx, jwksURL); err != nil {
		return nil, nil, jwksURL, err
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(raw, &set); err != nil {
		return nil, nil, jwksURL, fmt.Errorf("issuer's key set: %w", err)
	}
	if len(set.Keys) == 0 {
		return nil, nil, jwksURL, errors.New("issuer's key set is empty")
	}
	return set.Keys, raw, jwksURL, nil
}

func (k *keyCache) discover(ctx context.Context) (string, error) {
	raw, err := k.get(ctx, strings.TrimSuffix(k.issuer, "/")+"/.well-known/openid-configuration")
	if err != nil {
		return "", fmt.Errorf("OIDC discovery: %w", err)
	}
	var doc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return "", fmt.Errorf("OIDC discovery document: %w", err)
	}
	if doc.Issuer != k.issuer {
		return "", fmt.Errorf("OIDC discovery document is for issuer %q, not %q", doc.Issuer, k.issuer)
	}
	if doc.JWKSURI == "" {
		return "", errors.New("OIDC discovery document has no jwks_uri")
	}
	return doc.JWKSURI, nil
}

func (k *keyCache) get(ctx context.Context, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := k.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return nil, err
	}
	if len(body) > maxJWKSBytes {
		return nil, fmt.Errorf("GET %s: response larger than %d bytes", url, maxJWKSBytes)
	}
	return body, nil
}

func toAlgs(names []string) []jose.SignatureAlgorithm {
	out := make([]jose.SignatureAlgorithm, len(names))
	for i, n := range names {
		out[i] = jose.SignatureAlgorithm(n)
	}
	return out
}

// backendCacheTTL bounds how long a cached backend credential is used
// (Config.BackendCacheTTL's default). Changes (a new key, a removed
// backend, changed grants) reach a running relay through the change
// feed, which drops the backend from the cache (forget) within
// Config.ChangePoll; the TTL only bounds the damage of a feed the relay
// cannot read. While the store is down for every relay (Config.Outage) a
// credential older than that is still used when the store cannot be read
// (backendCache.stale).
const backendCacheTTL = time.Minute

// unknownBackendTTL is how long a name the store does not know is
// remembered as unknown: repeated attempts with it (a guesser's, a
// misconfigured client's) are answered from memory, not with a store read
// each. A backend added under that name is forgotten as unknown when the
// change feed tells (forget), within Config.ChangePoll; the TTL bounds a
// feed the relay cannot read, as backendCacheTTL does.
const unknownBackendTTL = 10 * time.Second

// maxCachedBackends bounds the cache, and its unknown names apart;
// past it the cache (or its unknown names) starts over.
const maxCachedBackends = 10000

type backendCache struct {
	mu sync.Mutex // guards m, unknown and gen
	m  map[string]cachedBackend
	// unknown holds the names the store did not know, with when it said
	// so.
	unknown map[string]time.Time
	// gen counts the calls of forget and forgetAll. A load caches what
	// it read only if gen did not move while it ran: otherwise the read
	// may have begun before a change the feed has told of since, and
	// caching it would undo that forget for backendCacheTTL.
	gen uint64
	// ttl is how long a read is used without reading the store again
	// (0: backendCacheTTL). stale, when set, reports whether a read of
	// the store that failed with err may be answered with the backend
	// last read however old (not one forgotten since): the store is
	// unreachable and down for every relay. staleUsed counts those
	// answers.
	ttl       time.Duration
	stale     func(err error) bool
	staleUsed atomic.Int64
}

type cachedBackend struct {
	b       store.Backend
	fetched time.Time
	// expired: read before changes the relay may have missed
	// (expireAll): read again at its next use, answered from the cache
	// only as stale allows.
	expired bool
}

// get returns the named backend from the cache while it is fresh (or
// store.ErrNotFound while it is remembered as unknown), else from load.
func (c *backendCache) get(ctx context.Context, name string, load func(context.Context, string) (store.Backend, error)) (store.Backend, error) {
	c.mu.Lock()
	e, ok := c.m[name]
	at, missing := c.unknown[name]
	c.mu.Unlock()
	if ok && !e.expired && time.Since(e.fetched) < cmp.Or(c.ttl, backendCacheTTL) {
		return e.b, nil
	}
	if !ok && missing && time.Since(at) < unknownBackendTTL {
		return store.Backend{}, fmt.Errorf("backend %q: %w", name, store.ErrNotFound)
	}
	b, err := c.reload(ctx, name, load)
	if err != nil && c.stale != nil && c.stale(err) {
		c.mu.Lock()
		e, ok := c.m[name]
		c.mu.Unlock()
		if ok && !e.fetched.IsZero() { // not forgotten since
			c.staleUsed.Add(1)
			return e.b, nil
		}
	}
	return b, err
}

// known reports whether the cache holds the named backend, fresh or not:
// a read of the store for it would be for a backend that exists, or did
// until the feed told otherwise.
func (c *backendCache) known(name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.m[name]
	return ok
}

// reload returns the named backend from load, and caches it (or that it
// is unknown) unless a backend was forgotten meanwhile. The caller gets
// what load read either way: its request raced with the change.
func (c *backendCache) reload(ctx context.Context, name string, load func(context.Context, string) (store.Backend, error)) (store.Backend, error) {
	c.mu.Lock()
	gen := c.gen
	c.mu.Unlock()
	b, err := load(ctx, name)
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.gen != gen:
		// Possibly from before a change the feed told of: the next
		// request reads the store again.
	case err == nil:
		if c.m == nil || len(c.m) >= maxCachedBackends {
			c.m = make(map[string]cachedBackend)
		}
		c.m[name] = cachedBackend{b: b, fetched: time.Now()}
		delete(c.unknown, name)
	case errors.Is(err, store.ErrNotFound):
		delete(c.m, name)
		if c.unknown == nil || len(c.unknown) >= maxCachedBackends {
			c.unknown = make(map[string]time.Time)
		}
		c.unknown[name] = time.Now()
	}
	return b, err
}

// forget drops what the cache holds of name, known or unknown: its next
// use reads the store. The name stays known (an entry that is never
// fresh): the change was to a backend of that name, which a source
// throttled for failed attempts may then still have read (authenticate),
// so that a backend just added works at once there too.
func (c *backendCache) forget(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxCachedBackends {
		c.m = make(map[string]cachedBackend)
	}
	c.m[name] = cachedBackend{} // fetched at the zero time: never fresh
	delete(c.unknown, name)
	c.gen++
}

// fill caches bs, every backend the store had when read, in place of
// what the cache held, unless a backend was forgotten since gen (a
// change the read may have missed: its backends are then read as they
// are used). Past maxCachedBackends, the rest are read as they are used.
func (c *backendCache) fill(gen uint64, bs []store.Backend) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen {
		return false
	}
	now := time.Now()
	c.m = make(map[string]cachedBackend, min(len(bs), maxCachedBackends))
	for _, b := range bs {
		if len(c.m) >= maxCachedBackends {
			break
		}
		c.m[b.Name] = cachedBackend{b: b, fetched: now}
		delete(c.unknown, b.Name)
	}
	return true
}

// expireAll has every backend read again at its next use, keeping what
// was read for stale answers (backendCache.stale), and forgets the names
// known to be unknown.
func (c *backendCache) expireAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for name, e := range c.m {
		e.expired = true
		c.m[name] = e
	}
	c.unknown = nil
	c.gen++
}

// forgetAll empties the cache.
func (c *backendCache) forgetAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m = nil
	c.unknown = nil
	c.gen++
}

// caller is an authenticated backend.
type caller struct {
	name   string
	grants []policy.Grant
	// via is how it proved who it is: api_key, certificate or jwt.
	via string
	// tenants, when not nil, narrows the grants to these tenants (the
	// tenant claim of a bearer token).
	tenants []string
}

// Identity is how the caller is named in stream headers and logs.
func (c *caller) Identity() string { return "backend:" + c.name }

// grantedTenant reports whether c may reach some service of tenant: a
// grant names it and, with a bearer token, the token does too. Only then
// do c's requests for the tenant belong in the tenant's audit trail: a
// backend with no grant for a tenant must not write into the trail the
// tenant's operators read by asking for its services.
func (c *caller) grantedTenant(tenant string) bool {
	if c.tenants != nil && !slices.Contains(c.tenants, tenant) {
		return false
	}
	return policy.AllowsTenant(c.grants, tenant)
}

// Ways a backend authenticates, as recorded in audit records.
const (
	viaAPIKey      = "api_key"
	viaCertificate = "certificate"
	viaJWT         = "jwt"
)

// unknownKeyHash is what the API key given with an unknown backend name
// is compared with: the same hash and constant-time comparison as for a
// known name, so that the answer's timing does not tell which names are
// registered. No key is known to hash to it (all zeros); the name being
// unknown refuses the key whatever the comparison says. Never written.
var unknownKeyHash [sha256.Size]byte

// authenticate checks a backend name and API key given from remote
// (host:port). Unknown names and wrong keys get the same answer, after
// the same work: a name the relay has in memory (every registered
// backend, LoadBackends, kept current by the change feed; the names it
// knows to be unknown) is checked without the store; another is read from
// the store, unless its source is throttled for failed attempts
// (authGuard): then it is refused as unknown without reading the store
// (and answered rate_limited), so that a throttled source guessing names
// costs the store nothing. A backend the relay has in memory is checked
// as usual from a throttled source, so its valid key still works behind
// an address someone else is guessing from.
func (fd *Server) authenticate(ctx context.Context, remote, name, key string) (*caller, error) {
	if name == "" || key == "" {
		return nil, protocol.Errorf(protocol.CodeUnauthenticated, "backend credentials required (backend name and API key)")
	}
	var b store.Backend
	err := store.ErrNotFound
	if fd.backends.known(name) || !fd.guard.throttled(remote) {
		b, err = fd.backends.get(ctx, name, fd.loadBackend)
	}
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return nil, fd.lookupFailed(ctx, "backend", err)
	}
	hash := b.KeyHash
	if err != nil {
		hash = unknownKeyHash[:]
	}
	if !credential.Matches(key, hash) || err != nil {
		return nil, protocol.Errorf(protocol.CodeUnauthenticated, "wrong backend name or API key")
	}
	return &caller{name: b.Name, grants: b.Grants, via: viaAPIKey}, nil
}

// loadBackend reads a backend from the store, timing it.
func (fd *Server) loadBackend(ctx context.Context, name string) (store.Backend, error) {
	start := time.Now()
	defer fd.cfg.Metrics.StoreOp("backend_lookup", start)
	ctx, cancel := fd.lookupContext(ctx)
	defer cancel()
	return fd.cfg.Store.Backend(ctx, name)
}

// lookupContext bounds one of a door's store reads by StreamOpenTimeout,
// the time a request is given to be answered: a database that stalls
// refuses the requests that need it (lookupFailed) instead of holding
// them, and their goroutines, for as long as it stalls.
//
// While the relay serves from what it last read (Config.Outage) the
// bound is outageLookup: the store has been down for a while, and a
// backend read before is answered from the cache when the read fails.
func (fd *Server) lookupContext(ctx context.Context) (context.Context, context.CancelFunc) {
	limit := fd.lookupLimit()
	if limit <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, limit)
}

// lookupLimit is the bound of a door's store read now (lookupContext);
// 0 for none.
func (fd *Server) lookupLimit() time.Duration {
	limit := fd.cfg.StreamOpenTimeout
	if fd.outage() && (limit <= 0 || limit > outageLookup) {
		limit = outageLookup
	}
	return limit
}

// outageLookup bounds a door's store reads while the relay serves from
// what it last read (Config.Outage).
const outageLookup = 2 * time.Second

// outage reports whether the relay serves from what it last read, its
// store down for every relay (Config.Outage).
func (fd *Server) outage() bool { return fd.cfg.Outage != nil && fd.cfg.Outage() }

// StaleBackends is how many backend authentications were answered from
// a credential older than the cache's TTL, the store down for every
// relay.
func (fd *Server) StaleBackends() int64 { return fd.backends.staleUsed.Load() }

// lookupFailed is the refusal for a store read of what (under ctx, the
// request's) that failed with err: unavailable when the store did not
// answer in time, so that the backend may try another relay; internal
// otherwise.
func (fd *Server) lookupFailed(ctx context.Context, what string, err error) error {
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		return protocol.Errorf(protocol.CodeUnavailable, "look up %s: this relay's store did not answer within %v: try again, or another relay", what, fd.lookupLimit())
	}
	return protocol.Errorf(protocol.CodeInternal, "look up %s: %v", what, err)
}

// authorize checks that c may reach service t.Service of tenant t.Tenant,
// and that the tenant exists. A backend without a grant learns nothing,
// not even whether the tenant exists.
func (fd *Server) authorize(ctx context.Context, c *caller, t route.Target) error {
	if !policy.Allows(c.grants, t.Tenant, t.Service) {
		return protocol.Errorf(protocol.CodeNotAllowed, "backend %q may not reach service %q of tenant %q (no grant)", c.name, t.Service, t.Tenant)
	}
	if c.tenants != nil && !slices.Contains(c.tenants, t.Tenant) {
		return protocol.Errorf(protocol.CodeNotAllowed, "backend %q's token does not name tenant %q", c.name, t.Tenant)
	}
	if fd.cfg.Routes.Connected(t.Tenant) > 0 {
		return nil // a tenant with a connected agent exists
	}
	lctx, cancel := fd.lookupContext(ctx)
	_, err := fd.cfg.Store.Tenant(lctx, t.Tenant)
	cancel()
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return protocol.Errorf(protocol.CodeUnknownTenant, "no tenant %q", t.Tenant)
		}
		if fd.outage() && fd.cfg.Store.Unreachable(err) {
			// The grant names it: routing finds its agents elsewhere,
			// or answers no_agent.
			return nil
		}
		return fd.lookupFailed(ctx, "tenant", err)
	}
	return nil
}
