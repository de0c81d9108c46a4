package relay

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/relay/internal/cluster"
	"github.com/tetherhq/tether/relay/internal/peer"
	"github.com/tetherhq/tether/relay/internal/session"
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
	r.links = peer.NewLinks(peer.LinksConfig{TLS: r.peerTLS, Logger: r.log, Holders: r.holdersOf})
	return nil
}

// assembleMember binds the peer listener and makes the membership, once
// the agent listener's address is known.
func (r *Relay) assembleMember() error {
	peerAddr := r.cfg.AdvertisePeer
	if r.cfg.PeerListen != Off {
		var err error
		r.peers, err = peer.NewServer(peer.ServerConfig{Listen: r.cfg.PeerListen, TLS: r.peerTLS, Router: r.router,
			HandshakeTimeout: r.cfg.HandshakeTimeout, IdleTimeout: r.cfg.IdleTimeout, Memory: r.mem, Logger: r.log,
			LastHeartbeat: func() time.Time { return r.member.LastHeartbeat() }})
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
// relay, forbids; but for the outage grace, while the store is down for
// every relay (outage.go). Streams already open go on. On SQLite the
// store is this relay's own file, written by this host only: nothing to
// fall behind.
func (r *Relay) admit() error {
	if !store.IsPostgres(r.cfg.Store) {
		return nil
	}
	since := r.staleFor()
	if since > r.cfg.StaleAfter && !r.inOutageGrace(since) {
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

// A relay cut off from the store while the agents and the other relays
// still reach it keeps its agents' sessions, but the other relays stop
// counting it (and the presence of its agents) DeadAfter after its last
// heartbeat: a tenant whose agents are held here only is then
// unreachable through every other relay for as long as the cut lasts.
// From inside, "this relay lost the store" and "the store is down for
// every relay" look alike, and in the latter case sending agents away
// would reconnect the whole fleet for nothing. So a relay whose last
// heartbeat is older than DeadAfter asks the relays it last saw live,
// over the relay-to-relay links, how long ago each last wrote its own
// (peer.Links.StoreStatus). Only when one of them did within DeadAfter/2
// does it send its agents away and refuse new ones (isolated), until its
// own heartbeat is written again, or until, asked again at every
// heartbeat, no relay reaches the store any more (the store is down for
// all, and nobody counts the agents sent away either). An agent sent
// away that comes back is admitted and kept (strays.go). A relay that
// lost the store at the same time as this one last wrote at most a
// heartbeat (under DeadAfter/2, as Config requires) before this one's
// last: it answers an age above DeadAfter/2, and does not count as
// reaching the store.

const (
	// storeAskTimeout bounds the question to the peers.
	storeAskTimeout = 3 * time.Second
	// liftAfter is how many rounds in a row (one a heartbeat) of an
	// isolated relay's questions must find no peer reaching the store
	// before it accepts agents again.
	liftAfter = 2
	// sendAwayPerAgent and maxSendAway pace the GoAways of an isolated
	// relay: agents are told one after another over a window that grows
	// with their number, so that the other relays do not take them all
	// in the same second.
	sendAwayPerAgent = 10 * time.Millisecond
	maxSendAway      = 30 * time.Second
)

// errIsolated refuses agents while the relay is isolated.
var errIsolated = protocol.Errorf(protocol.CodeUnavailable,
	"this relay has lost its store, which other relays of the cluster reach: connect to another relay")

// admitAgent refuses new agent sessions while the relay is isolated
// (session.Config.Admit), but for an agent that comes back after it was
// sent away (strays.go).
func (r *Relay) admitAgent(tenant, agent string) error {
	if !r.isolated.Load() {
		return nil
	}
	ok, first := r.strays.returned(store.AgentKey{Tenant: tenant, Agent: agent}, time.Now())
	if !ok {
		return errIsolated
	}
	if first {
		r.strayKept.Add(1)
		r.log.Warn("an agent this relay sent away came back: it could not connect to another relay, so this relay, which lost its store, admits and keeps it (the other relays do not count it)",
			"relay_id", r.relayID, "tenant", tenant, "agent", agent)
	}
	return nil
}

// watchStore watches this relay's heartbeat until ctx ends, and isolates
// the relay (above) while it has lost the store and a peer reaches it.
func (r *Relay) watchStore(ctx context.Context) {
	if !store.IsPostgres(r.cfg.Store) {
		return
	}
	tick := time.NewTicker(r.cfg.ClusterHeartbeat)
	defer tick.Stop()
	kept := false   // this outage's "keeps its agents" was logged
	unreached := 0  // rounds in a row, while isolated, that found no peer reaching the store
	graced := false // serving from what it last read (outage.go), at the last round
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		// The last round's decision, in the logs.
		r.noteOutage(&graced)
		last := r.member.LastHeartbeat()
		if last.IsZero() {
			continue // not joined yet: nobody counts this relay's agents
		}
		lost := time.Since(last)
		if lost <= r.member.DeadAfter() {
			r.downForAll.Store(false)
			if r.isolated.Swap(false) {
				r.strays.forget()
				r.log.Info("this relay reaches its store again: it accepts agents again", "relay_id", r.relayID)
			} else if kept {
				r.log.Info("this relay reaches its store again", "relay_id", r.relayID)
			}
			kept, unreached = false, 0
			continue
		}
		reach, answers, all := r.askPeers(ctx)
		if ctx.Err() != nil {
			return
		}
		// Down for every relay when each it can ask answers that it has
		// lost the store too (outage.go).
		r.downForAll.Store(reach == nil && all && !r.isolated.Load())
		if r.isolated.Load() {
			if reach != nil {
				unreached = 0
				// An agent admitted as the relay was deciding (its sessions
				// not draining yet) is sent after the others.
				r.sendAway(ctx, r.sessions.Sessions().Select("", true, nil))
				continue
			}
			// No other relay reaches the store any more (the one that
			// did died, or lost it too): nobody counts the agents that
			// were sent away either, and refusing them here leaves
			// their tenants with no relay at all. Twice in a row, so
			// that one lost answer does not lift it.
			if unreached++; unreached < liftAfter {
				continue
			}
			unreached = 0
			r.isolated.Store(false)
			r.strays.forget()
			r.downForAll.Store(all)
			kept = true
			r.log.Warn("no other relay says it reaches the store any more: this relay accepts agents again and keeps those it holds (the store may be down for every relay)",
				"relay_id", r.relayID, "store_lost_for", lost.Round(time.Millisecond), "peers_asked", len(answers), "answers", storeAnswers(answers))
			continue
		}
		if reach == nil {
			if !kept {
				kept = true
				r.log.Warn("this relay has not written its heartbeat to the store for longer than the other relays count it, and no other relay says it reaches the store: keeping its agents (the store may be down for every relay)",
					"relay_id", r.relayID, "store_lost_for", lost.Round(time.Millisecond), "peers_asked", len(answers), "answers", storeAnswers(answers))
			}
			continue
		}
		kept = false
		r.isolated.Store(true)
		r.isolations.Add(1)
		agents := r.sessions.Sessions().Select("", true, nil)
		r.log.Error("this relay has lost its store while another relay reaches it: the others no longer count its agents, so it sends them to the other relays and refuses new agents until its store is back",
			"relay_id", r.relayID, "store_lost_for", lost.Round(time.Millisecond), "peer", reach.Relay, "peer_heartbeat_age", reach.Age, "agents", len(agents))
		r.sendAway(ctx, agents)
	}
}

// askPeers asks the relays this one last saw live whether they reach the
// store, and returns the one that wrote its heartbeat most lately, if
// within DeadAfter/2 (nil: none does), with every answer; all is whether
// every one of them answered (none that could not be asked, or does not
// say).
func (r *Relay) askPeers(ctx context.Context) (reach *peer.StoreStatus, answers []peer.StoreStatus, all bool) {
	var peers []store.Relay
	for _, m := range r.member.Live() {
		if m.ID != r.relayID {
			peers = append(peers, m)
		}
	}
	actx, cancel := context.WithTimeout(ctx, storeAskTimeout)
	answers = r.links.StoreStatus(actx, peers)
	cancel()
	all = len(answers) == len(peers)
	for i, a := range answers {
		if a.Known && a.Beat && a.Age < r.member.DeadAfter()/2 && (reach == nil || a.Age < reach.Age) {
			reach = &answers[i]
		}
		if !a.Known || a.Err != nil {
			all = false
		}
	}
	return reach, answers, all
}

// sendAway tells the agents of conns (one session each, none draining:
// session.Set.Select with onePerAgent) to move to another relay, one
// after another over a window that grows with their number, until they
// all are told, ctx ends, or the relay reaches its store again; it
// remembers them (strays), and passes over those that came back and are
// kept.
func (r *Relay) sendAway(ctx context.Context, conns []*session.Conn) {
	if len(conns) == 0 {
		return
	}
	step := min(time.Duration(len(conns))*sendAwayPerAgent, maxSendAway) / time.Duration(len(conns))
	set := r.sessions.Sessions()
	for i, c := range conns {
		if i > 0 && step > 0 {
			t := time.NewTimer(step)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
		if time.Since(r.member.LastHeartbeat()) <= r.member.DeadAfter() {
			return // the store is back
		}
		if !r.strays.sentAway(store.AgentKey{Tenant: c.Tenant(), Agent: c.Agent()}, time.Now()) {
			continue // came back and is kept
		}
		set.GoAway(&r.bg, c.Tenant(), c.Agent(), goAwayLeaving, "relay has lost its store, which other relays reach: move to another relay", r.cfg.DrainTimeout)
	}
}

// storeAnswers sums up the peers' answers, for a log line.
func storeAnswers(as []peer.StoreStatus) []string {
	out := make([]string, 0, len(as))
	for _, a := range as {
		switch {
		case a.Err != nil:
			out = append(out, fmt.Sprintf("%s: %v", a.Relay, a.Err))
		case !a.Known:
			out = append(out, a.Relay+": does not say (an earlier version, or it cannot tell)")
		case !a.Beat:
			out = append(out, a.Relay+": never wrote its heartbeat")
		default:
			out = append(out, fmt.Sprintf("%s: last heartbeat %v ago", a.Relay, a.Age.Round(time.Millisecond)))
		}
	}
	return out
}
