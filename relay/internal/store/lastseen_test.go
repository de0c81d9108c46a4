package store

import (
	"fmt"
	"testing"
	"time"
)

func TestAgentsLastSeen(t *testing.T) { eachEngine(t, testAgentsLastSeen) }

func testAgentsLastSeen(t *testing.T, e engine) {
	s, path := e.open(t)
	s.AddTenant(ctx, "acme", t0)
	const n = 1234 // more than one chunk
	for i := range n {
		if err := s.AddAgent(ctx, Agent{ID: fmt.Sprintf("a%04d", i), Tenant: "acme", CreatedAt: t0}); err != nil {
			t.Fatal(err)
		}
	}
	if a, _ := s.Agent(ctx, "a0000"); !a.LastSeen.IsZero() {
		t.Fatalf("a new agent: LastSeen %v, want zero", a.LastSeen)
	}
	seen := map[string]time.Time{"nosuch": t0} // unknown agents are skipped
	for i := range n {
		seen[fmt.Sprintf("a%04d", i)] = t0.Add(time.Duration(i) * time.Second)
	}
	if err := s.SetAgentsLastSeen(ctx, seen); err != nil {
		t.Fatal(err)
	}
	// An older time changes nothing; a newer one moves it on.
	if err := s.SetAgentsLastSeen(ctx, map[string]time.Time{"a0001": t0, "a0002": t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s2, err := OpenDSN(ctx, path) // survives a reopen
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	all, err := s2.ListAgents(ctx, "acme")
	if err != nil || len(all) != n {
		t.Fatalf("ListAgents: %d agents, %v; want %d", len(all), err, n)
	}
	for i, a := range all {
		want := t0.Add(time.Duration(i) * time.Second)
		if i == 2 {
			want = t0.Add(time.Hour)
		}
		if !a.LastSeen.Equal(want) {
			t.Fatalf("agent %s: LastSeen %v, want %v", a.ID, a.LastSeen, want)
		}
	}
	if a, _ := s2.Agent(ctx, "a0001"); !a.LastSeen.Equal(t0.Add(time.Second)) {
		t.Fatalf("an older time replaced a newer one: %v", a.LastSeen)
	}
}
