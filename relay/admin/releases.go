package admin

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tetherhq/tether/relay/internal/audit"

	"github.com/tetherhq/tether/protocol"
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
	if errors.Is(err, store.ErrNotFound) {
		// Removed since it was looked up (release remove).
		return ro, nil, notFoundf("version %s: no release published (tether-relay release publish): it was removed as the rollout started", ro.Version)
	}
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

// Pages of agents' update states (UpdateStatus).
const (
	DefaultUpdatePage = 200
	MaxUpdatePage     = 1000
)

// UpdateStates are the states of an agent's update, in the order of a
// rollout: offered, on its way, done, then the ways it can end otherwise.
var UpdateStates = []string{protocol.UpdateOffered, protocol.UpdateDownloading, protocol.UpdateDownloaded, protocol.UpdateApplied,
	protocol.UpdateSucceeded, protocol.UpdateRefused, protocol.UpdateFailed, protocol.UpdateRolledBack}

// UpdateQuery selects the agents' update states UpdateStatus lists.
type UpdateQuery struct {
	Version, Tenant, State string // "" for any
	// Limit is the most agents' states listed: 1 to MaxUpdatePage; 0 is
	// DefaultUpdatePage.
	Limit int
	// Cursor is the NextCursor of the previous page; "" for the first.
	Cursor string
}

// ParseUpdateQuery reads an admin API query of agents' update states:
// version, tenant, state (one of UpdateStates), limit (1 to
// MaxUpdatePage, default DefaultUpdatePage) and cursor (the next_cursor
// of the previous page). Errors are ErrInvalid.
func ParseUpdateQuery(q url.Values) (UpdateQuery, error) {
	uq := UpdateQuery{Version: q.Get("version"), Tenant: q.Get("tenant"), State: q.Get("state"), Cursor: q.Get("cursor")}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > MaxUpdatePage {
			return UpdateQuery{}, invalidf("limit %q: want a number from 1 to %d", protocol.Clip(s, 32), MaxUpdatePage)
		}
		uq.Limit = n
	}
	if _, err := uq.filter(); err != nil {
		return UpdateQuery{}, err
	}
	return uq, nil
}

// filter checks q and returns the store's filter of its page. Errors are
// ErrInvalid.
func (q UpdateQuery) filter() (store.AgentUpdateFilter, error) {
	f := store.AgentUpdateFilter{Version: q.Version, Tenant: q.Tenant, State: q.State, Limit: q.Limit}
	if f.Version != "" && !release.ValidVersion(f.Version) {
		return f, invalidf("version %q is not a semantic version (1.2.3)", protocol.Clip(f.Version, 64))
	}
	if f.Tenant != "" {
		if err := identity.ValidateName("tenant", f.Tenant); err != nil {
			return f, invalid(err)
		}
	}
	if f.State != "" && !slices.Contains(UpdateStates, f.State) {
		return f, invalidf("state %q: want one of %s", protocol.Clip(f.State, 32), strings.Join(UpdateStates, ", "))
	}
	switch {
	case f.Limit == 0:
		f.Limit = DefaultUpdatePage
	case f.Limit < 0 || f.Limit > MaxUpdatePage:
		return f, invalidf("limit %d: want 1 to %d", f.Limit, MaxUpdatePage)
	}
	if q.Cursor != "" {
		k, err := parseUpdateCursor(q.Cursor)
		if err != nil {
			return f, invalidf("cursor %q: not one this API returned", protocol.Clip(q.Cursor, 64))
		}
		f.After = &k
	}
	return f, nil
}

// updateCursor is the cursor of the page after the one that ended with k:
// k, opaque to the reader.
func updateCursor(k store.AgentUpdateKey) string {
	b, _ := json.Marshal(cursorKey{At: k.UpdatedAt.Unix(), Agent: k.Agent, Version: k.Version})
	return base64.RawURLEncoding.EncodeToString(b)
}

// cursorKey is what a cursor of agents' update states holds.
type cursorKey struct {
	At      int64  `json:"t"`
	Agent   string `json:"a"`
	Version string `json:"v"`
}

func parseUpdateCursor(s string) (store.AgentUpdateKey, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return store.AgentUpdateKey{}, err
	}
	var c cursorKey
	if err := json.Unmarshal(b, &c); err != nil {
		return store.AgentUpdateKey{}, err
	}
	if c.Agent == "" || c.Version == "" {
		return store.AgentUpdateKey{}, errors.New("no agent or version")
	}
	return store.AgentUpdateKey{UpdatedAt: time.Unix(c.At, 0).UTC(), Agent: c.Agent, Version: c.Version}, nil
}

// UpdateStatus is the state of rollouts and a page of agents' updates.
type UpdateStatus struct {
	Rollouts []Rollout     `json:"rollouts"`
	Agents   []AgentUpdate `json:"agents"`
	// Counts counts the agents' update states of the version and tenant
	// queried by state, whatever the state queried and the page: every
	// one of UpdateStates, 0 or not. Without a version, an agent counts
	// once for each version it was offered.
	Counts map[string]int `json:"counts"`
	// NextCursor, when more agents' states follow, is the Cursor of the
	// next page.
	NextCursor string `json:"next_cursor,omitempty"`
}

// UpdateStatus returns the rollouts (newest first; those of q.Version
// only, when given) and a page of the agents' update states q selects,
// newest first by their last change, with their counts by state. An
// agent whose state changes while the pages are followed moves to the
// front: a new first page shows it. Errors in q are ErrInvalid.
func (a *Admin) UpdateStatus(ctx context.Context, q UpdateQuery) (UpdateStatus, error) {
	var st UpdateStatus
	if err := a.vendorOnly("rollouts"); err != nil {
		return st, err
	}
	f, err := q.filter()
	if err != nil {
		return st, err
	}
	ros, err := a.store.Rollouts(ctx, false)
	if err != nil {
		return st, err
	}
	for _, r := range ros {
		if q.Version != "" && r.Version != q.Version {
			continue
		}
		st.Rollouts = append(st.Rollouts, Rollout{ID: r.ID, Version: r.Version, Percent: r.Percent, Tenants: r.Tenants, Agents: r.Agents,
			HaltAt: r.HaltAt, Batch: r.Batch, State: r.State, Reason: r.Reason, CreatedAt: r.CreatedAt})
	}
	// One row more than the page tells whether more follow.
	limit := f.Limit
	f.Limit++
	us, err := a.store.AgentUpdatePage(ctx, f)
	if err != nil {
		return st, err
	}
	if len(us) > limit {
		us = us[:limit]
		st.NextCursor = updateCursor(us[limit-1].Key())
	}
	for _, u := range us {
		st.Agents = append(st.Agents, AgentUpdate{Agent: u.Agent, Tenant: u.Tenant, Version: u.Version, From: u.From, Rollout: u.Rollout,
			State: u.State, Reason: u.Reason, Message: u.Message, UpdatedAt: u.UpdatedAt})
	}
	if st.Counts, err = a.store.CountAgentUpdates(ctx, q.Version, q.Tenant); err != nil {
		return st, err
	}
	for _, s := range UpdateStates {
		if _, ok := st.Counts[s]; !ok {
			st.Counts[s] = 0
		}
	}
	return st, nil
}

// ReleaseInFlight is how recently an agent must have been offered a
// release, or have started downloading it, for RemoveRelease to take it
// as one that may still fetch it: the rollouts' stale bound (an offer or
// download older than this no longer counts against a rollout either).
const ReleaseInFlight = 15 * time.Minute

// ReleaseRemoval is what RemoveRelease removed.
type ReleaseRemoval struct {
	Version string `json:"version"`
	// Releases are the platforms and channels of the version removed.
	Releases []Release `json:"releases"`
	// BlobsRemoved and BytesFreed are the binaries removed from the
	// store (a binary another release refers to stays) and their size.
	BlobsRemoved int   `json:"blobs_removed"`
	BytesFreed   int64 `json:"bytes_freed"`
	// AgentUpdatesPruned is how many agents' update states went with it
	// (each agent's newest stays).
	AgentUpdatesPruned int64 `json:"agent_updates_pruned"`
}

// RemoveRelease removes every release of version from the store (each
// platform and channel), their binaries unless another release refers to
// one, the agents' update states of the version except each agent's
// newest, and this relay's copy of its files; relays sharing the store
// remove theirs when the change reaches them (or at their next start).
// It refuses (ErrInUse) while the active rollout offers the version, and,
// unless force, while agents were offered it or were downloading it
// within ReleaseInFlight. Vendor operators only.
func (a *Admin) RemoveRelease(ctx context.Context, version string, force bool) (ReleaseRemoval, error) {
	if err := a.vendorOnly("releases"); err != nil {
		return ReleaseRemoval{}, err
	}
	if !release.ValidVersion(version) {
		return ReleaseRemoval{}, invalidf("version %q is not a semantic version (1.2.3)", protocol.Clip(version, 64))
	}
	rm, err := a.store.RemoveRelease(ctx, version, a.now().Add(-ReleaseInFlight), force)
	if errors.Is(err, store.ErrNotFound) {
		return ReleaseRemoval{}, notFoundf("version %s: no release published", version)
	}
	if err != nil {
		return ReleaseRemoval{}, err
	}
	out := ReleaseRemoval{Version: version, BlobsRemoved: len(rm.Blobs), BytesFreed: rm.BlobBytes, AgentUpdatesPruned: rm.AgentUpdates}
	platforms := make([]string, len(rm.Releases))
	for i, r := range rm.Releases {
		out.Releases = append(out.Releases, releaseInfo(r))
		platforms[i] = r.OS + "/" + r.Arch + " " + r.Channel
	}
	// Recorded before the copy is removed: the store no longer has the
	// release whatever happens to the files.
	a.Record(audit.ReleaseRemove, "", "", "", map[string]any{"version": version, "releases": platforms, "blobs": rm.Blobs,
		"bytes_freed": rm.BlobBytes, "agent_updates_pruned": rm.AgentUpdates, "force": force})
	// This data directory's copy (a running relay's change feed may have
	// removed it already); the other relays of a cluster remove theirs
	// when the change reaches them.
	if _, err := a.dir.RemoveReleaseFiles(version); err != nil {
		return out, fmt.Errorf("release %s removed from the store, but this relay's copy could not be removed (the relay removes it at its next start or housekeeping, within 10 minutes): %w", version, err)
	}
	return out, nil
}
