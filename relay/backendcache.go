package relay

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/tetherhq/tether/relay/internal/store"
)

// BackendCacheTTL bounds how long a change to a backend credential (a new
// key, a removed backend, changed tenant grants), made by an admin command
// while the relay runs, takes to reach it. Within that time a stream open
// authenticates from memory instead of querying the store.
const BackendCacheTTL = 2 * time.Second

// maxCachedBackends bounds the cache; past it the cache starts over.
const maxCachedBackends = 10000

type backendCache struct {
	mu sync.Mutex
	m  map[string]cachedBackend
}

type cachedBackend struct {
	b       store.Backend
	fetched time.Time
}

// get returns the named backend from the cache while it is fresh, else
// from load. Unknown names are not cached, so a backend added while the
// relay runs works at once.
func (c *backendCache) get(ctx context.Context, name string, load func(context.Context, string) (store.Backend, error)) (store.Backend, error) {
	c.mu.Lock()
	e, ok := c.m[name]
	c.mu.Unlock()
	if ok && time.Since(e.fetched) < BackendCacheTTL {
		return e.b, nil
	}
	b, err := load(ctx, name)
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case err == nil:
		if c.m == nil || len(c.m) >= maxCachedBackends {
			c.m = make(map[string]cachedBackend)
		}
		c.m[name] = cachedBackend{b: b, fetched: time.Now()}
	case errors.Is(err, store.ErrNotFound):
		delete(c.m, name)
	}
	return b, err
}
