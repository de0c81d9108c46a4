package agent

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/tetherhq/tether/protocol"
)

// Several relays of a cluster. The relay an agent reaches sends the list
// of the cluster's live relays (protocol.Relays), each with the address
// at which it is reached on its own. The agent then keeps its K
// connection slots on distinct relays of the list:
//
//   - A slot that needs a connection takes the relay ranked best for this
//     agent (rendezvous hashing of the agent's and the relay's ids, so a
//     fleet spreads evenly and a relay joining or leaving changes the
//     choice of about 1/N of the agents) among those that no other slot
//     holds and that did not fail lately; failing that, one that another
//     slot holds (fewer relays than slots); failing that — no listed
//     relay is reachable — a configured address.
//   - A connected slot stays where it is when the list changes, except
//     when its relay drains or has left the list, or when it shares its
//     relay with a lower slot while a live relay holds none of the
//     agent's connections. It then connects to the new relay first and
//     leaves the old one after (its streams finish there).
//
// The configured addresses (often one DNS name shared by every relay) are
// used for the first connection and when no listed relay answers.

const (
	// maxRelayCandidates caps the relays of a list the agent considers:
	// the best-ranked for it. A list of hundreds (a large or a hostile
	// relay's) never makes it dial hundreds of addresses.
	maxRelayCandidates = 32
	// failMarkMin is how long, at least, a relay whose dial failed or
	// whose session was lost is passed over by slots looking for one
	// (doubled with each failure in a row, up to reconnect.max).
	failMarkMin = 5 * time.Second
	// leavingGrace is how long after its drain deadline a relay that
	// said it is leaving (GoAway "leaving") is passed over, unless the
	// lists show it back (gone or draining, then live again) sooner.
	leavingGrace = 5 * time.Second
	// firstWait bounds how long the slots other than the first wait for
	// the first connection's outcome (and the relay list it may bring)
	// before they dial a single configured address themselves.
	firstWait = 5 * time.Second
)

// target is where a slot dials: a listed relay (id set) or a configured
// address (id empty).
type target struct {
	id   string
	addr string
}

// key is how the view names the relay: its id, else its address.
func (t target) key() string { return relayKey(t.id, t.addr) }

func relayKey(id, addr string) string {
	if id != "" {
		return id
	}
	return "addr " + addr
}

// relayView is what the agent knows of its relays: the lists its sessions
// received, which relay each slot holds or is moving to, and which relays
// failed lately. Slots consult it to choose where to connect.
type relayView struct {
	seed    string // tenant and agent id: the rendezvous hashing's seed
	backoff Backoff
	log     *slog.Logger
	onHeld  func() // called when what the slots hold changes (the report lists it)

	readyOnce sync.Once
	ready     chan struct{} // closed at the first connection's outcome (waitReady)

	mu      sync.Mutex            // guards the fields below
	lists   map[*session]heard    // the latest list of each session not yet closed
	stale   []protocol.RelayInfo  // the last list heard, kept after its session closed
	seq     uint64                // counts lists heard
	ranked  []rankedRelay         // the merged list ranked for this agent (rankLocked)
	slots   map[int]*slotHold     // what each slot holds
	fails   map[string]failMark   // by relay key
	leaving map[string]*leaveMark // by relay id: relays that said GoAway "leaving"
	changed chan struct{}         // closed and replaced at every change
	// loggedAt is when the ranked list was last logged at info level
	// (rankLocked).
	loggedAt time.Time
}

// heard is a list as a session received it.
type heard struct {
	from   string // the id of the relay that sent it
	seq    uint64
	relays []protocol.RelayInfo
}

type rankedRelay struct {
	protocol.RelayInfo
	score uint64
}

// slotHold is the relay a slot holds (connected) or dials, and the one it
// is moving to.
type slotHold struct {
	target
	connected bool
	moving    *target
}

type failMark struct {
	n     int // failures in a row
	until time.Time
}

type leaveMark struct {
	until    time.Time
	seenGone bool // a list showed the relay draining or absent since
}

func newRelayView(seed string, b Backoff, log *slog.Logger, onHeld func()) *relayView {
	return &relayView{
		seed: seed, backoff: b, log: log, onHeld: onHeld,
		ready:   make(chan struct{}),
		lists:   make(map[*session]heard),
		slots:   make(map[int]*slotHold),
		fails:   make(map[string]failMark),
		leaving: make(map[string]*leaveMark),
		changed: make(chan struct{}),
	}
}

// rendezvous is the score of relay id for the agent seed: each agent ranks
// the relays in its own order, and a relay that joins or leaves moves only
// the agents that rank it first.
func rendezvous(seed, id string) uint64 {
	h := sha256.New()
	h.Write([]byte(seed))
	h.Write([]byte{0})
	h.Write([]byte(id))
	return binary.BigEndian.Uint64(h.Sum(nil))
}

// changes returns a channel closed at the next change of the view.
func (v *relayView) changes() <-chan struct{} {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.changed
}

func (v *relayView) notifyLocked() {
	close(v.changed)
	v.changed = make(chan struct{})
}

// markReady releases the slots waiting for the first connection's outcome.
func (v *relayView) markReady() { v.readyOnce.Do(func() { close(v.ready) }) }

// waitReady waits until the first connection has an outcome (a relay list,
// a relay that sends none, a failure), for at most d.
func (v *relayView) waitReady(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-v.ready:
	case <-t.C:
	case <-ctx.Done():
	}
}

// setList records the list s received; it replaces the previous one of s.
func (v *relayView) setList(s *session, list []protocol.RelayInfo) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.seq++
	v.lists[s] = heard{from: s.relayID, seq: v.seq, relays: list}
	v.stale = list
	v.rankLocked()
	v.notifyLocked()
	v.markReady()
}

// dropList forgets the list of a session that closed; the last list heard
// stays for the slots to use until a session brings a newer one.
func (v *relayView) dropList(s *session) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if _, ok := v.lists[s]; !ok {
		return
	}
	delete(v.lists, s)
	v.rankLocked()
	v.notifyLocked()
}

// rankLocked merges the lists of the sessions (the last list heard when
// none has one) and ranks the result for this agent, best first, keeping
// maxRelayCandidates. A relay's address comes from the latest list that
// names it; it is draining when any list says so.
func (v *relayView) rankLocked() {
	lists := make([]heard, 0, len(v.lists))
	for _, h := range v.lists {
		lists = append(lists, h)
	}
	if len(lists) == 0 && v.stale != nil {
		lists = append(lists, heard{relays: v.stale})
	}
	slices.SortFunc(lists, func(a, b heard) int { return cmp.Compare(b.seq, a.seq) })
	byID := map[string]int{}
	var merged []rankedRelay
	for _, h := range lists {
		for _, r := range h.relays {
			if i, ok := byID[r.ID]; ok {
				merged[i].Draining = merged[i].Draining || r.Draining
				continue
			}
			byID[r.ID] = len(merged)
			merged = append(merged, rankedRelay{RelayInfo: r, score: rendezvous(v.seed, r.ID)})
		}
	}
	// A relay that said it is leaving is passed over until the lists show
	// it gone or draining and then live again (it restarted), or for a
	// while after its drain deadline. Past that, its mark says nothing
	// (drainingLocked) and is forgotten: a relay that left for good (its
	// replacement has another id) would otherwise keep its mark for as
	// long as the agent runs, one more for every such relay.
	now := time.Now()
	for id, m := range v.leaving {
		i, listed := byID[id]
		switch {
		case !now.Before(m.until):
			delete(v.leaving, id)
		case !listed || merged[i].Draining:
			m.seenGone = true
		case m.seenGone:
			delete(v.leaving, id)
		}
	}
	slices.SortFunc(merged, func(a, b rankedRelay) int {
		return cmp.Or(cmp.Compare(b.score, a.score), cmp.Compare(a.ID, b.ID))
	})
	before := v.ranked
	if len(merged) > maxRelayCandidates {
		merged = merged[:maxRelayCandidates]
	}
	v.ranked = merged
	if !sameRelays(before, merged) {
		ids := make([]string, len(merged))
		for i, r := range merged {
			ids[i] = r.ID
			if r.Draining {
				ids[i] += " (draining)"
			}
		}
		// A relay that changes its list again and again gets a line at
		// info level every listLogEvery, the rest at debug level.
		level := slog.LevelDebug
		if now.Sub(v.loggedAt) >= listLogEvery {
			level, v.loggedAt = slog.LevelInfo, now
		}
		v.log.Log(context.Background(), level, "relays of the cluster", "relays", ids)
	}
}

// listLogEvery spaces the info lines about the relay list changing.
const listLogEvery = 10 * time.Second

func sameRelays(a, b []rankedRelay) bool {
	return slices.EqualFunc(a, b, func(x, y rankedRelay) bool { return x.RelayInfo == y.RelayInfo })
}

// knownLocked reports whether a relay list is known.
func (v *relayView) knownLocked() bool { return len(v.ranked) > 0 }

// drainingLocked reports whether relay id is draining: a list says so, or
// it said it is leaving.
func (v *relayView) drainingLocked(id string, now time.Time) bool {
	if m, ok := v.leaving[id]; ok && now.Before(m.until) {
		return true
	}
	lists := v.lists
	if len(lists) == 0 {
		lists = map[*session]heard{nil: {relays: v.stale}}
	}
	for _, h := range lists {
		for _, r := range h.relays {
			if r.ID == id && r.Draining {
				return true
			}
		}
	}
	return false
}

// goneLocked reports whether relay id has left the cluster: the lists
// that sessions to other relays received leave it out (a relay's own list
// is not trusted to judge it: it may not list itself yet).
func (v *relayView) goneLocked(id string) bool {
	judged := false
	for _, h := range v.lists {
		if h.from == id {
			continue
		}
		judged = true
		for _, r := range h.relays {
			if r.ID == id {
				return false
			}
		}
	}
	return judged
}

// failedLocked reports whether the relay of key failed lately, and until when.
func (v *relayView) failedLocked(key string, now time.Time) (time.Time, bool) {
	m, ok := v.fails[key]
	return m.until, ok && now.Before(m.until)
}

// othersLocked counts, by relay key, the other slots holding, dialling or
// moving to each relay.
func (v *relayView) othersLocked(slot int) map[string]int {
	n := map[string]int{}
	for i, h := range v.slots {
		if i == slot {
			continue
		}
		n[h.key()]++
		if h.moving != nil {
			n[h.moving.key()]++
		}
	}
	return n
}

// chooseLocked picks a relay of the list for slot: the best-ranked one no
// other slot holds, then (when share) the one the fewest other slots hold;
// relays that failed lately, draining ones and those in skip are passed
// over. It also returns when the next relay passed over for a failure
// becomes eligible again.
func (v *relayView) chooseLocked(slot int, share bool, skip string, now time.Time) (target, time.Time, bool) {
	others := v.othersLocked(slot)
	var best *rankedRelay
	var retry time.Time
	for i := range v.ranked {
		r := &v.ranked[i]
		if r.Draining || r.ID == skip || v.drainingLocked(r.ID, now) {
			continue
		}
		if until, failed := v.failedLocked(r.ID, now); failed {
			if retry.IsZero() || until.Before(retry) {
				retry = until
			}
			continue
		}
		n := others[r.ID]
		if n > 0 && !share {
			continue
		}
		if best == nil || n < others[best.ID] {
			best = r
		}
		if n == 0 {
			break // the best-ranked relay no other slot holds
		}
	}
	if best == nil {
		return target{}, retry, false
	}
	return target{id: best.ID, addr: best.Addr}, retry, true
}

// pick chooses the relay slot dials next and records the claim, so that
// no other slot picks it meanwhile. ok is false when no listed relay can
// be chosen (no list, or none reachable lately): the slot then dials a
// configured address (claim).
func (v *relayView) pick(slot int) (target, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if !v.knownLocked() {
		return target{}, false
	}
	t, _, ok := v.chooseLocked(slot, true, "", time.Now())
	if !ok {
		return target{}, false
	}
	v.slots[slot] = &slotHold{target: t}
	v.notifyLocked()
	return t, true
}

// claim records that slot dials a configured address.
func (v *relayView) claim(slot int, t target) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.slots[slot] = &slotHold{target: t}
	v.notifyLocked()
}

// connected records that slot holds session s (which may replace the
// session it moved from); the relay's failures are forgotten.
func (v *relayView) connected(slot int, s *session, relaySendsList bool) {
	v.mu.Lock()
	t := target{id: s.relayID, addr: s.relay}
	v.slots[slot] = &slotHold{target: t, connected: true}
	delete(v.fails, t.key())
	delete(v.fails, relayKey("", s.relay))
	v.notifyLocked()
	v.mu.Unlock()
	if !relaySendsList {
		v.markReady() // no list will come
	}
	v.onHeld()
}

// failed records that a dial of slot to t failed, or that its session to
// t was lost: slots pass t over for a while. The slot holds nothing now.
func (v *relayView) failed(slot int, t target) {
	v.mu.Lock()
	now := time.Now()
	v.markFailedLocked(t.key(), now)
	held := v.slots[slot] != nil && v.slots[slot].connected
	delete(v.slots, slot)
	v.notifyLocked()
	v.mu.Unlock()
	v.markReady()
	if held {
		v.onHeld()
	}
}

func (v *relayView) markFailedLocked(key string, now time.Time) {
	for k, m := range v.fails {
		if now.Sub(m.until) > 5*time.Minute {
			delete(v.fails, k) // long expired: keeps the map small
		}
	}
	m := v.fails[key]
	m.n++
	d := failMarkMin
	for i := 1; i < m.n && d < v.backoff.Max; i++ {
		d *= 2
	}
	m.until = now.Add(min(d, max(v.backoff.Max, failMarkMin)))
	v.fails[key] = m
}

// refusedFor is how long a listed relay whose address the agent refused to
// dial (relayaddr.go) is passed over.
const refusedFor = 10 * time.Minute

// refuse records that t's address was refused (relayaddr.go): slots pass
// it over for refusedFor.
func (v *relayView) refuse(t target) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.fails[t.key()] = failMark{n: 1, until: time.Now().Add(refusedFor)}
	v.notifyLocked()
}

// release records that slot holds no relay (it stopped, or its session
// went away on the relay's request).
func (v *relayView) release(slot int) {
	v.mu.Lock()
	h := v.slots[slot]
	delete(v.slots, slot)
	v.notifyLocked()
	v.mu.Unlock()
	if h != nil && h.connected {
		v.onHeld()
	}
}

// leavingRelay records that relay id said it is leaving; it is passed over
// until the lists show it back, or until after its drain deadline.
func (v *relayView) leavingRelay(id string, drainUntil time.Time) {
	if id == "" {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	now := time.Now()
	for k, m := range v.leaving {
		if !now.Before(m.until) {
			delete(v.leaving, k) // says nothing any more (drainingLocked)
		}
	}
	m := &leaveMark{until: drainUntil.Add(leavingGrace), seenGone: v.drainingLocked(id, now)}
	v.leaving[id] = m
	v.notifyLocked()
}

// moveTarget says whether connected slot should move, where, and why: its
// relay drains or has left the list (to any other relay, even one another
// slot holds), or a lower slot holds the same relay while a listed relay
// holds none of the agent's connections (to that relay). When it should
// not move now, retry is when that may change without notice (a relay
// passed over for a failure becomes eligible). A move is recorded until
// moveDone or connected.
func (v *relayView) moveTarget(slot int) (t target, why string, retry time.Time, ok bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	h := v.slots[slot]
	if h == nil || !h.connected || h.moving != nil || h.id == "" || !v.knownLocked() {
		return target{}, "", time.Time{}, false
	}
	now := time.Now()
	switch {
	case v.drainingLocked(h.id, now):
		why = "its relay is draining"
	case v.goneLocked(h.id):
		why = "its relay has left the cluster's list"
	default:
		for i, o := range v.slots {
			if i < slot && o.connected && o.moving == nil && o.id == h.id {
				why = "another connection of this agent is on the same relay"
			}
		}
		if why == "" {
			return target{}, "", time.Time{}, false
		}
		t, retry, ok = v.chooseLocked(slot, false, h.id, now)
		if ok {
			h.moving = &t
			v.notifyLocked()
		}
		return t, why, retry, ok
	}
	t, retry, ok = v.chooseLocked(slot, true, h.id, now)
	if ok {
		h.moving = &t
		v.notifyLocked()
	}
	return t, why, retry, ok
}

// moveDone records that slot's move to t did not happen; when failed, t
// is passed over for a while.
func (v *relayView) moveDone(slot int, t target, failed bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if h := v.slots[slot]; h != nil {
		h.moving = nil
	}
	if failed {
		v.markFailedLocked(t.key(), time.Now())
	}
	v.notifyLocked()
}

// cluster returns the relay list as this agent ranks it (best first, at
// most maxRelayCandidates), for the status.
func (v *relayView) cluster() []protocol.RelayInfo {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := make([]protocol.RelayInfo, len(v.ranked))
	now := time.Now()
	for i, r := range v.ranked {
		out[i] = r.RelayInfo
		out[i].Draining = r.Draining || v.drainingLocked(r.ID, now)
	}
	return out
}
