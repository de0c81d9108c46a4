package frontdoor

import (
	"context"
	"testing"

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
