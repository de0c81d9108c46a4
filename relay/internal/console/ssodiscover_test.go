package console

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestSSODiscoverySharedAndBounded: sign-ins that need an issuer's
// discovery document while it is being read wait for that one reading,
// not for one reading each in turn, and a sign-in whose request ends
// stops waiting at once. Once read, the document is not read again; a
// reading that failed is remembered for ssoRetryFailed (sign-ins
// meanwhile get its error without a reading), then tried again by the
// next sign-in.
func TestSSODiscoverySharedAndBounded(t *testing.T) {
	release := make(chan struct{})
	var reads atomic.Int32
	var fail atomic.Bool
	fail.Store(true)
	var idp *httptest.Server
	idp = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/.well-known/openid-configuration" {
			http.NotFound(w, r)
			return
		}
		reads.Add(1)
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		if fail.Load() {
			http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
			return
		}
		json.NewEncoder(w).Encode(map[string]any{
			"issuer": idp.URL, "authorization_endpoint": idp.URL + "/auth", "token_endpoint": idp.URL + "/token",
			"jwks_uri": idp.URL + "/keys", "id_token_signing_alg_values_supported": []string{"RS256"},
		})
	}))
	defer idp.Close()
	iss := &ssoIssuer{SSOIssuer: SSOIssuer{Name: "corp", Issuer: idp.URL, ClientID: "tether"}}
	clock := newTestClock()
	flow := &ssoFlow{client: idp.Client(), log: slog.New(slog.DiscardHandler), now: clock.now}

	// Five sign-ins at once while the issuer does not answer, then one
	// whose request ends meanwhile.
	var wg sync.WaitGroup
	errs := make(chan error, 5)
	for range 5 {
		wg.Go(func() {
			_, _, err := iss.discover(context.Background(), flow)
			errs <- err
		})
	}
	waiting := func(n int) func() bool {
		return func() bool {
			iss.mu.Lock()
			defer iss.mu.Unlock()
			return iss.pending != nil && iss.pending.waiters == n
		}
	}
	waitFor(t, waiting(4)) // and one reading
	gone, leave := context.WithCancel(context.Background())
	goneErr := make(chan error, 1)
	go func() {
		_, _, err := iss.discover(gone, flow)
		goneErr <- err
	}()
	waitFor(t, waiting(5))
	leave()
	select {
	case err := <-goneErr:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("a sign-in whose request ended: %v, want its context's end", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a sign-in whose request ended still waits for the issuer")
	}
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err == nil {
			t.Fatal("discovery succeeded against an issuer answering 503")
		}
	}
	if n := reads.Load(); n != 1 {
		t.Fatalf("%d readings of the discovery document for six sign-ins at once, want 1", n)
	}

	// The failure is remembered: the issuer is not asked again before
	// ssoRetryFailed.
	fail.Store(false)
	clock.advance(ssoRetryFailed - time.Millisecond)
	if _, _, err := iss.discover(context.Background(), flow); err == nil {
		t.Fatal("a sign-in within ssoRetryFailed of a failed reading did not get its failure")
	}
	if n := reads.Load(); n != 1 {
		t.Fatalf("%d readings within ssoRetryFailed of the failed one, want 1", n)
	}

	// The next sign-in after it tries again, and the document read stays.
	clock.advance(time.Millisecond)
	for range 3 {
		if p, v, err := iss.discover(context.Background(), flow); err != nil || p == nil || v == nil {
			t.Fatalf("discover after the issuer came back: %v", err)
		}
	}
	if n := reads.Load(); n != 2 {
		t.Fatalf("%d readings in all, want 2 (the failed one, then one kept)", n)
	}
}

// testClock is a clock that moves only when told.
type testClock struct {
	mu sync.Mutex // guards t
	t  time.Time
}

func newTestClock() *testClock { return &testClock{t: time.Now()} }

func (c *testClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// waitFor polls cond until it holds, for at most 10 s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10 s")
		}
	}
}

// An issuer's discovery document names the endpoints the relay itself
// calls (the token endpoint it posts codes to, the key set it reads), and
// a tenant's own issuer is the tenant's to write: the relay holds them to
// the issuer's own rule, https (http only on a loopback address), so that
// a tenant cannot point the relay's requests at plain-http services of
// its network (a cloud metadata address, an internal admin port) by
// starting a sign-in. Before, any URL was taken and called.
func TestSSODiscoveryEndpointsHeldToIssuerRule(t *testing.T) {
	for name, tc := range map[string]struct {
		token, keys string
		ok          bool
	}{
		"token endpoint on another network": {token: "http://192.0.2.10/token", keys: "/keys"},
		"key set at a metadata address":     {token: "/token", keys: "http://169.254.169.254/latest/meta-data/"},
		"not a URL":                         {token: "token", keys: "/keys"},
		"the issuer's own, on loopback":     {token: "/token", keys: "/keys", ok: true},
		"https elsewhere":                   {token: "https://oauth2.example.com/token", keys: "https://keys.example.com/jwks", ok: true},
	} {
		t.Run(name, func(t *testing.T) {
			var idp *httptest.Server
			idp = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				abs := func(u string) string {
					if u != "" && u[0] == '/' {
						return idp.URL + u
					}
					return u
				}
				json.NewEncoder(w).Encode(map[string]any{
					"issuer": idp.URL, "authorization_endpoint": idp.URL + "/auth", "token_endpoint": abs(tc.token),
					"jwks_uri": abs(tc.keys), "id_token_signing_alg_values_supported": []string{"RS256"},
				})
			}))
			defer idp.Close()
			iss := &ssoIssuer{SSOIssuer: SSOIssuer{Name: "acme", Issuer: idp.URL, ClientID: "tether", Tenant: "acme"}}
			flow := &ssoFlow{client: idp.Client(), log: slog.New(slog.DiscardHandler), now: time.Now}
			_, _, err := iss.discover(context.Background(), flow)
			if (err == nil) != tc.ok {
				t.Errorf("discover with token endpoint %q, key set %q: %v; want ok %v", tc.token, tc.keys, err, tc.ok)
			}
		})
	}
}
