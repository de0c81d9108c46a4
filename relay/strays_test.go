package relay

import (
	"fmt"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/internal/store"
)

// An isolated relay admits an agent it sent away when it comes back
// within strayReturn, keeps it from then on (it is not sent away again),
// and refuses an agent it never sent away, or sent away too long ago.
func TestStrays(t *testing.T) {
	var s strays
	now := time.Now()
	back := store.AgentKey{Tenant: "acme", Agent: "a1"}
	late := store.AgentKey{Tenant: "acme", Agent: "a2"}
	never := store.AgentKey{Tenant: "acme", Agent: "a3"}
	if !s.sentAway(back, now) || !s.sentAway(late, now.Add(-strayReturn-time.Second)) {
		t.Fatal("sentAway of agents not kept reported false")
	}
	for _, tc := range []struct {
		name      string
		k         store.AgentKey
		ok, first bool
	}{
		{"sent away, back within the window", back, false, false},
		{"sent away, back a second time", back, false, false},
		{"sent away, back a third time", back, true, true},
		{"kept, back again", back, true, false},
		{"sent away too long ago", late, false, false},
		{"never sent away", never, false, false},
	} {
		if ok, first := s.returned(tc.k, now); ok != tc.ok || first != tc.first {
			t.Errorf("%s: returned %v, %v; want %v, %v", tc.name, ok, first, tc.ok, tc.first)
		}
	}
	if s.sentAway(back, now) {
		t.Error("sentAway of a kept agent reported true: it would be sent away again")
	}
	s.forget()
	if ok, _ := s.returned(back, now); ok {
		t.Error("an agent kept before forget still admitted")
	}
}

// The memory is bounded: when full, the entries past the window go, and
// if none is, a further agent is told to leave but not remembered.
func TestStraysBounded(t *testing.T) {
	var s strays
	now := time.Now()
	for i := range maxStrays {
		s.sentAway(store.AgentKey{Tenant: "acme", Agent: fmt.Sprint(i)}, now)
	}
	extra := store.AgentKey{Tenant: "acme", Agent: "extra"}
	if !s.sentAway(extra, now) {
		t.Fatal("sentAway of an agent past the bound reported false")
	}
	if n := len(s.m); n != maxStrays {
		t.Fatalf("%d agents remembered, want the bound %d", n, maxStrays)
	}
	if ok, _ := s.returned(extra, now); ok {
		t.Error("an agent not remembered admitted")
	}
	later := now.Add(strayReturn + time.Second)
	s.sentAway(extra, later)
	if n := len(s.m); n != 1 {
		t.Fatalf("%d agents remembered once the others are past the window, want 1", n)
	}
	s.returned(extra, later)
	s.returned(extra, later)
	if ok, first := s.returned(extra, later); !ok || !first {
		t.Errorf("returned %v, %v for an agent remembered after the others went; want true, true", ok, first)
	}
}
