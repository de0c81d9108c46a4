package relay

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/tetherhq/tether/relay/internal/store"
)

// backendCacheTTL bounds how long a cached backend credential is used.
// Changes (a new key, a removed backend, changed grants) reach a running
// relay through the change feed, which drops the backend from the cache
// (forget) within Config.ChangePoll; the TTL only bounds the damage of a
// feed the relay cannot read.
const backendCacheTTL = time.Minute

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
	if ok && time.Since(e.fetched) < backendCacheTTL {
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

// forget drops name from the cache: its next use reads the store.
func (c *backendCache) forget(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, name)
}

// forgetAll empties the cache.
func (c *backendCache) forgetAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m = nil
}
