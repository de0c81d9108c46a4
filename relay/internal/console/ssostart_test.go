package console

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/internal/throttle"
)

// logLines is a log that a test can read back.
type logLines struct {
	mu  sync.Mutex // guards buf
	buf bytes.Buffer
}

func (l *logLines) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(b)
}

func (l *logLines) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.buf.String(), s)
}

// TestSSOStartWhileIdPDown: while the identity provider is down, sign-in
// starts, which need no credential, ask it once per ssoRetryFailed however
// many there are (at once or one after another), and the relay warns once
// per reading; a source throttled for failed sign-ins is refused at the
// start too.
func TestSSOStartWhileIdPDown(t *testing.T) {
	var hits atomic.Int64
	release := make(chan struct{})
	idp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		http.Error(w, "down", http.StatusServiceUnavailable)
	}))
	defer idp.Close()
	var once sync.Once
	openIdP := func() { once.Do(func() { close(release) }) }
	defer openIdP()
	logs := &logLines{}
	clock := newTestClock()
	d := startDashRelay(t, func(c *Config) {
		c.SSO = SSOConfig{PublicURL: "https://127.0.0.1:7446", Issuers: []SSOIssuer{{Name: "corp", Issuer: idp.URL, ClientID: "tether-console",
			ClientSecret: "s", Groups: map[string]string{"ops": "vendor"}}}}
		c.SSOClient = idp.Client()
		c.Logger = slog.New(slog.NewTextHandler(logs, nil))
		c.Now = clock.now
		c.Throttle = throttle.Config{Burst: 3, Every: time.Hour}
	})
	cl := d.client(t)
	defer cl.CloseIdleConnections()
	get := func(path string) int {
		resp, err := cl.Get(d.base + path)
		if err != nil {
			t.Error(err)
			return 0
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	const warning = "identity provider unreachable"

	// Twenty starts at once share one reading.
	var wg sync.WaitGroup
	codes := make(chan int, 20)
	for range 20 {
		wg.Go(func() { codes <- get("/login/sso/corp") })
	}
	waitFor(t, func() bool { return hits.Load() == 1 })
	openIdP()
	wg.Wait()
	close(codes)
	for c := range codes {
		if c != http.StatusServiceUnavailable {
			t.Fatalf("a start while the identity provider is down: %d, want 503", c)
		}
	}
	// Then 200 more within ssoRetryFailed: no reading at all.
	for range 200 {
		if c := get("/login/sso/corp"); c != http.StatusServiceUnavailable {
			t.Fatalf("a start while the identity provider is down: %d, want 503", c)
		}
	}
	if n, w := hits.Load(), logs.count(warning); n != 1 || w != 1 {
		t.Fatalf("220 starts within %v: %d requests to the identity provider and %d warnings, want 1 and 1", ssoRetryFailed, n, w)
	}
	// Past it, the next start asks again, once.
	clock.advance(ssoRetryFailed)
	for range 50 {
		get("/login/sso/corp")
	}
	if n, w := hits.Load(), logs.count(warning); n != 2 || w != 2 {
		t.Fatalf("50 more starts after %v: %d requests to the identity provider and %d warnings in all, want 2 and 2", ssoRetryFailed, n, w)
	}

	// A source that failed its burst of sign-ins is refused at the start.
	for range 3 {
		get("/login/sso/callback") // no state cookie: a failed sign-in
	}
	if c := get("/login/sso/corp"); c != http.StatusTooManyRequests {
		t.Fatalf("a start from a source throttled for failed sign-ins: %d, want 429", c)
	}
}
