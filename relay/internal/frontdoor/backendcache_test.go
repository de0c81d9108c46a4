package frontdoor

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/internal/store"
)

// A backend read from the store before a change and returned after the
// change feed said to forget it is not cached: the next request reads the
// store again, instead of using the old read for backendCacheTTL.
func TestBackendCacheForgetDuringLoad(t *testing.T) {
	for name, forget := range map[string]func(*backendCache){
		"forget":    func(c *backendCache) { c.forget("billing") },
		"forgetAll": func(c *backendCache) { c.forgetAll() },
	} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			var c backendCache
			before := store.Backend{Name: "billing", Grants: []store.Grant{{Tenant: "acme", Service: store.Any}}}
			after := store.Backend{Name: "billing"} // its grant removed
			loading, release := make(chan struct{}), make(chan struct{})
			got := make(chan store.Backend, 1)
			go func() {
				b, _ := c.get(ctx, "billing", func(context.Context, string) (store.Backend, error) {
					close(loading)
					<-release
					return before, nil
				})
				got <- b
			}()
			<-loading
			forget(&c) // the change committed and the feed told, while the read above ran
			close(release)
			if b := <-got; len(b.Grants) != 1 {
				t.Fatalf("the request that raced with the change got %+v, want what its read found", b)
			}
			loads := 0
			load := func(context.Context, string) (store.Backend, error) {
				loads++
				return after, nil
			}
			b, err := c.get(ctx, "billing", load)
			if err != nil || len(b.Grants) != 0 {
				t.Fatalf("after the change: %+v, %v; want the backend without its grant", b, err)
			}
			// What was read after the change is cached as usual.
			if b, err := c.get(ctx, "billing", load); err != nil || len(b.Grants) != 0 || loads != 1 {
				t.Fatalf("second read after the change: %+v, %v, %d loads; want it from the cache", b, err, loads)
			}
		})
	}
}

// A name the store does not know is remembered as unknown: the next
// request does not read the store. The change feed's forget (a backend of
// that name was added) drops that, and keeps the name known, so that the
// next request reads the store even from a throttled source; forgetAll
// forgets both.
func TestBackendCacheUnknownNames(t *testing.T) {
	ctx := context.Background()
	var c backendCache
	loads := 0
	exists := false
	load := func(_ context.Context, name string) (store.Backend, error) {
		loads++
		if !exists {
			return store.Backend{}, store.ErrNotFound
		}
		return store.Backend{Name: name}, nil
	}
	for i := range 3 {
		if _, err := c.get(ctx, "payroll", load); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("get %d of an unknown name: %v; want not found", i+1, err)
		}
	}
	if loads != 1 || c.known("payroll") {
		t.Fatalf("an unknown name asked 3 times: %d loads, known %v; want 1 load, not known", loads, c.known("payroll"))
	}
	exists = true
	c.forget("payroll") // the feed: payroll was added
	if !c.known("payroll") {
		t.Fatal("after the feed told of payroll, it is not known: a throttled source would not read it")
	}
	if b, err := c.get(ctx, "payroll", load); err != nil || b.Name != "payroll" || loads != 2 {
		t.Fatalf("after the feed told of payroll: %+v, %v, %d loads; want it read from the store", b, err, loads)
	}
	exists = false
	c.forget("payroll") // removed
	if _, err := c.get(ctx, "payroll", load); !errors.Is(err, store.ErrNotFound) || c.known("payroll") || loads != 3 {
		t.Fatalf("after payroll was removed: %v, known %v, %d loads; want not found from the store, and no longer known", err, c.known("payroll"), loads)
	}
	c.forgetAll()
	if _, err := c.get(ctx, "payroll", load); !errors.Is(err, store.ErrNotFound) || loads != 4 {
		t.Fatalf("after forgetAll: %v, %d loads; want the store read again", err, loads)
	}
}

// While the store is down for every relay (stale says so of the read's
// error), a credential older than the TTL is answered from the cache
// when the read fails; never when the store answered that the backend
// does not exist, nor for a backend the change feed said changed, nor
// when the read failed otherwise.
func TestBackendCacheStaleIfUnreachable(t *testing.T) {
	ctx := context.Background()
	errDown := errors.New("store unreachable")
	billing := store.Backend{Name: "billing", Grants: []store.Grant{{Tenant: "acme", Service: store.Any}}}
	for _, c := range []struct {
		name    string
		outage  bool  // stale answers for errDown
		readErr error // what the read after the TTL returns
		forget  bool  // the feed said billing changed
		want    error // nil: billing from the cache
	}{
		{name: "unreachable", outage: true, readErr: errDown},
		{name: "no outage", readErr: errDown, want: errDown},
		{name: "not found", outage: true, readErr: store.ErrNotFound, want: store.ErrNotFound},
		{name: "other error", outage: true, readErr: errors.New("permission denied"), want: errors.New("")},
		{name: "forgotten", outage: true, readErr: errDown, forget: true, want: errDown},
	} {
		t.Run(c.name, func(t *testing.T) {
			cache := backendCache{ttl: time.Nanosecond, // every read is past it
				stale: func(err error) bool { return c.outage && errors.Is(err, errDown) }}
			if _, err := cache.get(ctx, "billing", func(context.Context, string) (store.Backend, error) { return billing, nil }); err != nil {
				t.Fatal(err)
			}
			if c.forget {
				cache.forget("billing")
			}
			b, err := cache.get(ctx, "billing", func(context.Context, string) (store.Backend, error) { return store.Backend{}, c.readErr })
			switch {
			case c.want == nil && (err != nil || b.Name != "billing" || len(b.Grants) != 1):
				t.Errorf("got %+v, %v; want billing from the cache", b, err)
			case c.want != nil && err == nil:
				t.Errorf("got %+v; want the read's error", b)
			case c.want != nil && c.want.Error() != "" && !errors.Is(err, c.want):
				t.Errorf("got %v, want %v", err, c.want)
			}
			if n := cache.staleUsed.Load(); (n == 1) != (c.want == nil) {
				t.Errorf("stale answers counted %d", n)
			}
		})
	}
}

// expireAll (the relay reads its whole state again and the store cannot
// be read) has every backend read again at its next use, but keeps it
// for a stale answer; forgetAll keeps nothing.
func TestBackendCacheExpireAll(t *testing.T) {
	ctx := context.Background()
	errDown := errors.New("store unreachable")
	billing := store.Backend{Name: "billing", Grants: []store.Grant{{Tenant: "acme", Service: store.Any}}}
	cache := backendCache{stale: func(err error) bool { return errors.Is(err, errDown) }}
	if _, err := cache.get(ctx, "billing", func(context.Context, string) (store.Backend, error) { return billing, nil }); err != nil {
		t.Fatal(err)
	}
	cache.expireAll()
	reads := 0
	b, err := cache.get(ctx, "billing", func(context.Context, string) (store.Backend, error) {
		reads++
		return store.Backend{}, errDown
	})
	if reads != 1 || err != nil || b.Name != "billing" {
		t.Fatalf("after expireAll, the store down: %d reads, %+v, %v; want one read and billing from the cache", reads, b, err)
	}
	cache.forgetAll()
	if _, err := cache.get(ctx, "billing", func(context.Context, string) (store.Backend, error) { return store.Backend{}, errDown }); !errors.Is(err, errDown) {
		t.Fatalf("after forgetAll, the store down: %v, want the read's error", err)
	}
}
