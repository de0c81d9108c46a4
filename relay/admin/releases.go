package admin

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/tetherhq/tether/relay/internal/audit"

	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/protocol/release"
	"github.com/tetherhq/tether/relay/internal/store"
)

// Release describes a published release.
type Release struct {
	Version     string    `json:"version"`
	OS          string    `json:"os"`
	Arch        string    `json:"arch"`
	Channel     string    `json:"channel"`
	SHA256      string    `json:"sha256"`
	Size        int64     `json:"size"`
	Expires     time.Time `json:"expires"`
	KeyID       string    `json:"key_id"`
	PublishedAt time.Time `json:"published_at"`
}

func releaseInfo(r store.Release) Release {
	return Release{Version: r.Version, OS: r.OS, Arch: r.Arch, Channel: r.Channel, SHA256: r.SHA256, Size: r.Size,
		Expires: r.ExpiresAt, KeyID: r.KeyID, PublishedAt: r.PublishedAt}
}

// PublishRelease stores the signed release in dir in the store (its
// binary by content hash) and records it. The files must be consistent
// (release.ReadDir); when keys are given, the signatures must also verify
// with one of them.
func (a *Admin) PublishRelease(ctx context.Context, dir string, keys release.Keys) (Release, error) {
	if err := a.vendorOnly("releases"); err != nil {
		return Release{}, err
	}
	f, err := release.ReadDir(dir, keys)
	if err != nil {
		return Release{}, fmt.Errorf("signed release in %s: %w", dir, err)
	}
	m := f.Manifest
	rec := store.Release{Version: m.Version, OS: m.OS, Arch: m.Arch, Channel: m.Channel, SHA256: m.SHA256, Size: m.Size,
		ExpiresAt: m.Expires, KeyID: release.KeyID(f.KeyID), PublishedAt: a.now(),
		BinarySignature: f.BinarySignature, Manifest: f.Signed.Manifest, ManifestSignature: f.ManifestSignature}
	if err := a.store.AddRelease(ctx, rec, bytes.NewReader(f.Binary)); err != nil {
		return Release{}, err
	}
	if _, err := a.dir.ReleaseFiles(ctx, rec); err != nil {
		return Release{}, fmt.Errorf("release %s stored, but its files could not be written to the data directory: %w", m.Version, err)
	}
	a.Record(audit.ReleasePublish, "", "", "", map[string]any{"version": m.Version, "os": m.OS, "arch": m.Arch, "channel": m.Channel,
		"sha256": m.SHA256, "size": m.Size, "expires": m.Expires, "key_id": rec.KeyID})
	return releaseInfo(rec), nil
}

// Releases lists the published releases, newest first.
func (a *Admin) Releases(ctx context.Context) ([]Release, error) {
	if err := a.vendorOnly("releases"); err != nil {
		return nil, err
	}
	rs, err := a.store.Releases(ctx, "")
	if err != nil {
		return nil, err
	}
	out := make([]Release, len(rs))
	for i, r := range rs {
		out[i] = releaseInfo(r)
	}
	return out, nil
}

// Rollout is a rollout of a version to a selection of agents.
type Rollout struct {
	ID      int64    `json:"id"`
	Version string   `json:"version"`
	Percent int      `json:"percent,omitempty"`
	Tenants []string `json:"tenants,omitempty"`
	Agents  []string `json:"agents,omitempty"`
	// HaltAt is the fraction of the agents offered the release that may
	// fail (refuse it, fail, or roll back) before the rollout halts; 0
	// never halts.
	HaltAt float64 `json:"halt_at,omitempty"`
	// Batch is how many agents may be updating at once; 0 is no limit.
	Batch     int       `json:"batch,omitempty"`
	State     string    `json:"state,omitempty"`
	Reason    string    `json:"reason,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

// StartRollout starts rolling out a published version, superseding the
// active rollout. It returns warnings worth showing the operator (an
// expired release is still offered: agents refuse it, which is audited).
func (a *Admin) StartRollout(ctx context.Context, ro Rollout) (Rollout, []string, error) {
	if err := a.vendorOnly("rollouts"); err != nil {
		return ro, nil, err
	}
	if !release.ValidVersion(ro.Version) {
		return ro, nil, invalidf("version %q is not a semantic version (1.2.3)", ro.Version)
	}
	n := 0
	if ro.Percent != 0 {
		n++
	}
	if len(ro.Tenants) > 0 {
		n++
	}
	if len(ro.Agents) > 0 {
		n++
	}
	switch {
	case n != 1:
		return ro, nil, invalidf("choose the agents with exactly one of percent, tenants or agents")
	case ro.Percent < 0 || ro.Percent > 100:
		return ro, nil, invalidf("percent %d: want 1 to 100", ro.Percent)
	case ro.HaltAt < 0 || ro.HaltAt > 1:
		return ro, nil, invalidf("halt-at %v: want a fraction from 0 to 1", ro.HaltAt)
	case ro.Batch < 0:
		return ro, nil, invalidf("batch %d: want 0 (no limit) or more", ro.Batch)
	}
	for _, t := range ro.Tenants {
		if err := identity.ValidateName("tenant", t); err != nil {
			return ro, nil, invalid(err)
		}
	}
	for _, id := range ro.Agents {
		if err := identity.ValidateName("agent", id); err != nil {
			return ro, nil, invalid(err)
		}
	}
	rels, err := a.store.Releases(ctx, ro.Version)
	if err != nil {
		return ro, nil, err
	}
	if len(rels) == 0 {
		return ro, nil, notFoundf("version %s: no release published (tether-relay release publish)", ro.Version)
	}
	var warns []string
	for _, r := range rels {
		if !a.now().Before(r.ExpiresAt) {
			warns = append(warns, fmt.Sprintf("release %s %s/%s %s expired at %s: agents will refuse it", r.Version, r.OS, r.Arch, r.Channel, r.ExpiresAt.Format(time.RFC3339)))
		}
	}
	ro.CreatedAt = a.now()
	id, err := a.store.AddRollout(ctx, store.Rollout{Version: ro.Version, Percent: ro.Percent, Tenants: ro.Tenants, Agents: ro.Agents,
		HaltAt: ro.HaltAt, Batch: ro.Batch, CreatedAt: ro.CreatedAt})
	if err != nil {
		return ro, nil, err
	}
	ro.ID, ro.State = id, store.RolloutActive
	a.Record(audit.ReleaseRollout, "", "", "", map[string]any{"rollout": id, "version": ro.Version, "percent": ro.Percent,
		"tenants": ro.Tenants, "agents": ro.Agents, "halt_at": ro.HaltAt, "batch": ro.Batch})
	return ro, warns, nil
}

// AgentUpdate is where one agent stands with one version.
type AgentUpdate struct {
	Agent     string    `json:"agent"`
	Tenant    string    `json:"tenant"`
	Version   string    `json:"version"`
	From      string    `json:"from,omitempty"`
	Rollout   int64     `json:"rollout,omitempty"`
	State     string    `json:"state"`
	Reason    string    `json:"reason,omitempty"`
	Message   string    `json:"message,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
}

// UpdateStatus is the state of rollouts and of every agent's updates.
type UpdateStatus struct {
	Rollouts []Rollout     `json:"rollouts"`
	Agents   []AgentUpdate `json:"agents"`
}

// UpdateStatus returns the rollouts (newest first) and the agents' update
// states for version ("" for every version).
func (a *Admin) UpdateStatus(ctx context.Context, version string) (UpdateStatus, error) {
	var st UpdateStatus
	if err := a.vendorOnly("rollouts"); err != nil {
		return st, err
	}
	ros, err := a.store.Rollouts(ctx, false)
	if err != nil {
		return st, err
	}
	for _, r := range ros {
		if version != "" && r.Version != version {
			continue
		}
		st.Rollouts = append(st.Rollouts, Rollout{ID: r.ID, Version: r.Version, Percent: r.Percent, Tenants: r.Tenants, Agents: r.Agents,
			HaltAt: r.HaltAt, Batch: r.Batch, State: r.State, Reason: r.Reason, CreatedAt: r.CreatedAt})
	}
	us, err := a.store.AgentUpdates(ctx, version)
	if err != nil {
		return st, err
	}
	for _, u := range us {
		st.Agents = append(st.Agents, AgentUpdate{Agent: u.Agent, Tenant: u.Tenant, Version: u.Version, From: u.From, Rollout: u.Rollout,
			State: u.State, Reason: u.Reason, Message: u.Message, UpdatedAt: u.UpdatedAt})
	}
	slices.SortStableFunc(st.Agents, func(x, y AgentUpdate) int { return y.UpdatedAt.Compare(x.UpdatedAt) })
	return st, nil
}
