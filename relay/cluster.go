package relay

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/relay/internal/cluster"
	"github.com/tetherhq/tether/relay/internal/peer"
	"github.com/tetherhq/tether/relay/internal/store"
	"github.com/tetherhq/tether/relay/internal/trust"
)

// A relay's part in a cluster: its membership (cluster.Cluster: its row
// and its agents' presence in the store, the live relays), links to the
// other relays for streams to agents connected there (peer.Links, the
// router's Elsewhere), and, with a peer listener, the streams other relays
// forward to the agents connected here (peer.Server). A relay on its own
// has all of it too, with nobody to forward to: one relay is a cluster of
// one.

// assemblePeers makes what the router needs before it exists: the relay
// id, its relay-to-relay TLS and the links to peers.
func (r *Relay) assemblePeers() error {
	id, err := r.dir.RelayID(r.cfg.RelayID)
	if err != nil {
		return fmt.Errorf("relay id: %w", err)
	}
	r.relayID = id
	if r.peerTLS, err = trust.NewPeer(r.auth, r.audit, id, r.cfg.Now); err != nil {
		return err
	}
	r.links = peer.NewLinks(peer.LinksConfig{TLS: r.peerTLS, Logger: r.log,
		Holders: func(ctx context.Context, tenant string, fresh bool) ([]store.Holding, error) {
			return r.member.Holders(ctx, tenant, fresh)
		}})
	return nil
}

// assembleMember binds the peer listener and makes the membership, once
// the agent listener's address is known.
func (r *Relay) assembleMember() error {
	peerAddr := r.cfg.AdvertisePeer
	if r.cfg.PeerListen != Off {
		var err error
		r.peers, err = peer.NewServer(peer.ServerConfig{Listen: r.cfg.PeerListen, TLS: r.peerTLS, Router: r.router,
			HandshakeTimeout: r.cfg.HandshakeTimeout, IdleTimeout: r.cfg.IdleTimeout, Logger: r.log})
		if err != nil {
			return err
		}
		if peerAddr == "" {
			peerAddr = r.peers.Addr().String()
		}
	}
	// A relay on its own (SQLite) names no address to its agents unless
	// one is advertised: they keep to the address they were configured
	// with, which is the one that reaches it from where they run (a DNS
	// name, through their proxy), where its listen address may not. In a
	// cluster a listen address on a specific host is the best guess left.
	agentAddr := r.cfg.Advertise
	if agentAddr == "" && store.IsPostgres(r.cfg.Store) {
		if host, _, err := net.SplitHostPort(r.cfg.AgentListen); err == nil && !unspecifiedHost(host) {
			agentAddr = r.sessions.Addr().String()
		}
	}
	if store.IsPostgres(r.cfg.Store) {
		if r.peers == nil {
			r.log.Warn("no peer listener: the other relays of the cluster cannot forward streams to the agents connected here (set --peer-listen)")
		}
		if agentAddr == "" {
			r.log.Warn("no advertised agent address: agents of the cluster are not told of this relay and reach it only through the address they were configured with (set --advertise)")
		}
	}
	// The epoch is proposed from this host's clock; the store raises it
	// above the last run's when this clock is behind that run's.
	r.member = cluster.New(cluster.Config{Store: r.dir.Store, ID: r.relayID, Epoch: time.Now().UnixNano(),
		AgentAddr: agentAddr, PeerAddr: peerAddr, Version: r.cfg.Version, Started: time.Now(),
		Heartbeat: r.cfg.ClusterHeartbeat, DeadAfter: r.cfg.ClusterDeadAfter, Load: r.load,
		Fenced: r.failed, Logger: r.log})
	return nil
}

// load is what this relay holds, for its row.
func (r *Relay) load() (agents, sessions int, streams int64) {
	seen := map[[2]string]bool{}
	for _, c := range r.sessions.Sessions().Select("", false, nil) {
		sessions++
		streams += c.Load()
		seen[[2]string{c.Tenant(), c.Agent()}] = true
	}
	return len(seen), sessions, streams
}

// clusterAgents lists the agents of tenant connected to any live relay.
func (r *Relay) clusterAgents(ctx context.Context, tenant string) (map[string]bool, error) {
	ar, err := r.member.AgentRelays(ctx, tenant)
	if err != nil {
		return nil, err
	}
	out := make(map[string]bool, len(ar))
	for k := range ar {
		out[k.Agent] = true
	}
	return out, nil
}

// admit refuses new streams while a relay on a shared store cannot
// confirm that it is current: its change feed read and its heartbeat
// written within StaleAfter. It might otherwise let through a stream that
// a revocation or a removed grant, written meanwhile through another
// relay, forbids. Streams already open go on. On SQLite the store is this
// relay's own file, written by this host only: nothing to fall behind.
func (r *Relay) admit() error {
	if !store.IsPostgres(r.cfg.Store) {
		return nil
	}
	last := time.Unix(0, r.feedReadAt.Load())
	beat := r.member.LastHeartbeat()
	if beat.IsZero() {
		beat = r.started // no heartbeat yet: the first is on its way
	}
	if beat.Before(last) {
		last = beat
	}
	if since := time.Since(last); since > r.cfg.StaleAfter {
		return protocol.Errorf(protocol.CodeUnavailable, "this relay has not reached its store for %v and cannot confirm it is current: try another relay", since.Round(time.Second))
	}
	return nil
}

// leave tells this relay's agents to go. When other relays of the cluster
// are live and not draining, it marks this one draining (peers and their
// agents learn it within a heartbeat) and asks its agents to move there
// (GoAway "leaving": an agent that knows it opens its replacement first),
// then waits, up to DrainTimeout, for them to leave, while streams in
// flight and streams forwarded here go on. Otherwise it tells them the
// relay shuts down.
func (r *Relay) leave() {
	others := 0
	for _, m := range r.member.Live() {
		if m.ID != r.relayID && !m.Draining {
			others++
		}
	}
	set := r.sessions.Sessions()
	if others == 0 {
		set.GoAway(&r.bg, "", "", "shutdown", "relay is shutting down", r.cfg.DrainTimeout)
		return
	}
	r.member.SetDraining(true)
	n := set.GoAway(&r.bg, "", "", goAwayLeaving, "relay is leaving its cluster: move to another relay", r.cfg.DrainTimeout)
	r.log.Info("leaving the cluster: agents asked to move to the other relays", "sessions", n, "other_relays", others)
	deadline := time.Now().Add(r.cfg.DrainTimeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for len(set.Select("", false, nil)) > 0 && time.Now().Before(deadline) {
		<-tick.C
	}
	if left := len(set.Select("", false, nil)); left > 0 {
		r.log.Warn("drain timeout: agent sessions still here", "sessions", left)
	}
}

// goAwayLeaving is the GoAway reason of a relay leaving its cluster.
const goAwayLeaving = protocol.GoAwayLeaving

// relayList is the cluster's live relays as agents reach each one: those
// that advertise an agent address, draining ones marked.
func (r *Relay) relayList() []protocol.RelayInfo {
	var out []protocol.RelayInfo
	for _, m := range r.member.Live() {
		if m.AgentAddr == "" || protocol.ValidateRelayID(m.ID) != nil || protocol.ValidateRelayAddr(m.AgentAddr) != nil {
			continue
		}
		out = append(out, protocol.RelayInfo{ID: m.ID, Addr: m.AgentAddr, Draining: m.Draining})
		if len(out) == protocol.MaxRelays {
			break
		}
	}
	return out
}

// tellAgents sends the relay list to the agents whenever it changes, until
// ctx ends.
func (r *Relay) tellAgents(ctx context.Context) {
	for {
		changed := r.member.Changes()
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
		n := r.sessions.SendRelays(&r.bg)
		r.log.Debug("the cluster's relays changed; told the agents", "relays", len(r.relayList()), "sessions", n)
	}
}
