package admin

import (
	"context"
	"errors"
	"time"

	"github.com/tetherhq/tether/relay/internal/audit"
	"github.com/tetherhq/tether/relay/internal/cluster"
	"github.com/tetherhq/tether/relay/internal/store"
)

// Relay is one relay of the cluster as operators see it.
type Relay struct {
	ID string `json:"id"`
	// AgentAddr and PeerAddr are where agents and the other relays reach
	// it ("" when it does not say).
	AgentAddr string `json:"agent_addr,omitempty"`
	PeerAddr  string `json:"peer_addr,omitempty"`
	Version   string `json:"version"`
	// Schema is the newest store schema version its binary knows (0: not
	// known, a binary from before schema 19): while it is below the
	// store's, the relay runs an older release than the store's schema
	// (README, "Upgrading the store's schema").
	Schema    int       `json:"schema,omitempty"`
	StartedAt time.Time `json:"started_at"`
	// HeartbeatAge is how long ago it last wrote its row, by the store's
	// clock; Alive is false once that is past the time after which a
	// relay counts as gone (it left, or it died).
	HeartbeatAge time.Duration `json:"heartbeat_age_ns"`
	Alive        bool          `json:"alive"`
	Draining     bool          `json:"draining"`
	Agents       int           `json:"agents"`
	Sessions     int           `json:"sessions"`
	Streams      int64         `json:"streams"`
	// This marks the relay that answered.
	This bool `json:"this,omitempty"`
}

// Relays lists the relays that share the store, live ones first, then by
// id; a relay gone for a week is forgotten.
func (a *Admin) Relays(ctx context.Context) ([]Relay, error) {
	if err := a.vendorOnly("the cluster's relays"); err != nil {
		return nil, err
	}
	rs, err := a.store.Relays(ctx)
	if err != nil {
		return nil, err
	}
	live, gone := []Relay{}, []Relay{}
	for _, r := range rs {
		x := Relay{ID: r.ID, AgentAddr: r.AgentAddr, PeerAddr: r.PeerAddr, Version: r.Version, Schema: r.Schema, StartedAt: r.StartedAt,
			HeartbeatAge: r.Age, Alive: r.Alive(cluster.DefaultDeadAfter), Draining: r.Draining, This: r.ID == a.relayID && a.relayID != ""}
		if x.Alive {
			x.Agents, x.Sessions, x.Streams = r.Agents, r.Sessions, r.Streams
			live = append(live, x)
		} else {
			gone = append(gone, x)
		}
	}
	return append(live, gone...), nil
}

// RemoveRelay forgets a relay that is gone for good (its row and its
// agents' presence). A relay that still runs writes its row again at its
// next heartbeat, and its agents' presence with it.
func (a *Admin) RemoveRelay(ctx context.Context, id string) error {
	if err := a.vendorOnly("removing a relay"); err != nil {
		return err
	}
	if err := a.store.RemoveRelay(ctx, id); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return notFoundf("no relay %q", id)
		}
		return err
	}
	a.Record(audit.RelayRemove, "", "", "", map[string]any{"relay": id})
	return nil
}

// agentRelays maps each agent of tenant ("" for all) connected to a live
// relay to the relays holding it; nil when the store cannot say.
func (a *Admin) agentRelays(ctx context.Context, tenant string) map[store.AgentKey][]string {
	ar, err := a.store.AgentRelays(ctx, tenant, cluster.DefaultDeadAfter)
	if err != nil {
		a.log.Warn("read which relays hold which agents", "err", err)
		return nil
	}
	return ar
}
