package session

import (
	"fmt"
	"testing"

	"github.com/tetherhq/tether/relay/internal/store"
)

// A record read before a revocation the feed told of while the admission
// ran is not kept (it would undo the forget); the cache is bounded.
func TestRecordCache(t *testing.T) {
	var c recordCache
	gen := c.generation()
	c.put(gen, store.Agent{ID: "a1", Tenant: "acme"})
	if rec, ok := c.get("a1"); !ok || rec.Tenant != "acme" {
		t.Fatalf("a1 after put: %+v, %v; want it kept", rec, ok)
	}
	gen = c.generation()
	c.forget("a1") // the feed told of a1's revocation while its admission read the store
	c.put(gen, store.Agent{ID: "a1", Tenant: "acme"})
	if _, ok := c.get("a1"); ok {
		t.Fatal("a record read before a revocation told since was kept")
	}
	gen = c.generation()
	for i := range maxRecords + 10 {
		c.put(gen, store.Agent{ID: fmt.Sprintf("agent-%d", i), Tenant: "acme"})
	}
	if n := len(c.m); n != maxRecords {
		t.Errorf("%d records kept, want the bound, %d", n, maxRecords)
	}
	if _, ok := c.get(fmt.Sprintf("agent-%d", maxRecords+9)); !ok {
		t.Error("the newest record was not kept")
	}
}
