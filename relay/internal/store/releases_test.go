package store

import (
	"errors"
	"testing"
)

func TestReleasesAndRollouts(t *testing.T) {
	s, _ := open(t)
	r := Release{Version: "1.2.0", OS: "linux", Arch: "amd64", Channel: "stable", SHA256: "ab", Size: 10, ExpiresAt: t0, Dir: "d", PublishedAt: t0}
	if err := s.AddRelease(ctx, r); err != nil {
		t.Fatal(err)
	}
	if err := s.AddRelease(ctx, r); !errors.Is(err, ErrExists) {
		t.Fatalf("second publish: got %v, want ErrExists", err)
	}
	if got, err := s.Releases(ctx, "1.2.0"); err != nil || len(got) != 1 || got[0].Dir != "d" || !got[0].ExpiresAt.Equal(t0) {
		t.Fatalf("releases: got %+v, %v", got, err)
	}
	if _, err := s.ActiveRollout(ctx); !errors.Is(err, ErrNotFound) {
		t.Fatalf("active rollout before any: got %v, want ErrNotFound", err)
	}
	id1, err := s.AddRollout(ctx, Rollout{Version: "1.2.0", Percent: 10, CreatedAt: t0})
	if err != nil {
		t.Fatal(err)
	}
	id2, err := s.AddRollout(ctx, Rollout{Version: "1.2.0", Tenants: []string{"a", "b"}, HaltAt: 0.5, Batch: 2, CreatedAt: t0})
	if err != nil {
		t.Fatal(err)
	}
	act, err := s.ActiveRollout(ctx)
	if err != nil || act.ID != id2 || len(act.Tenants) != 2 || act.HaltAt != 0.5 || act.Batch != 2 {
		t.Fatalf("active: got %+v, %v, want rollout %d", act, err, id2)
	}
	all, _ := s.Rollouts(ctx, false)
	if len(all) != 2 || all[1].ID != id1 || all[1].State != RolloutSuperseded {
		t.Fatalf("rollouts: got %+v", all)
	}
	if ok, err := s.HaltRollout(ctx, id2, "2 of 3 failed", t0); !ok || err != nil {
		t.Fatalf("halt: %v %v", ok, err)
	}
	if ok, _ := s.HaltRollout(ctx, id2, "again", t0); ok {
		t.Fatal("halted a halted rollout again")
	}
	u := AgentUpdate{Agent: "ag1", Version: "1.2.0", Tenant: "a", Rollout: id2, State: "offered", From: "1.0.0", UpdatedAt: t0}
	if err := s.SetAgentUpdate(ctx, u); err != nil {
		t.Fatal(err)
	}
	u.State, u.Reason, u.From, u.Rollout = "rolled_back", "unhealthy", "", 0
	if err := s.SetAgentUpdate(ctx, u); err != nil {
		t.Fatal(err)
	}
	got, err := s.AgentUpdate(ctx, "ag1", "1.2.0")
	if err != nil || got.State != "rolled_back" || got.From != "1.0.0" || got.Rollout != id2 || got.Reason != "unhealthy" {
		t.Fatalf("agent update: got %+v, %v", got, err)
	}
	if _, err := s.AgentUpdate(ctx, "ag2", "1.2.0"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown agent update: got %v", err)
	}
}
