package update

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/protocol/release"
	"github.com/tetherhq/tether/protocol/transport"
	"github.com/tetherhq/tether/relay/internal/audit"
	"github.com/tetherhq/tether/relay/internal/datadir"
	"github.com/tetherhq/tether/relay/internal/store"
)

// fakeAgent is a session of agent id (default a1) running version
// (default 1.0.0) on linux/amd64, which takes updates; the offers sent to
// it are counted, and its update streams fail at once, counted.
type fakeAgent struct {
	id, version string
	offers      atomic.Int64
	streams     atomic.Int64
	done        chan struct{}
	cancels     chan *protocol.UpdateCancel // when set, the UpdateCancel messages sent to it
}

func (f *fakeAgent) Identity() identity.Agent {
	return identity.Agent{TrustDomain: "update.test", Tenant: "acme", ID: cmp.Or(f.id, "a1")}
}

func (f *fakeAgent) Hello() *protocol.Hello {
	return &protocol.Hello{AgentVersion: cmp.Or(f.version, "1.0.0"), OS: "linux", Arch: "amd64", Capabilities: []string{protocol.CapUpdate}}
}

func (f *fakeAgent) Send(m protocol.Message) error {
	switch m := m.(type) {
	case *protocol.UpdateOffer:
		f.offers.Add(1)
	case *protocol.UpdateCancel:
		if f.cancels != nil {
			f.cancels <- m
		}
	}
	return nil
}

func (f *fakeAgent) Logger() *slog.Logger  { return slog.New(slog.DiscardHandler) }
func (f *fakeAgent) Done() <-chan struct{} { return f.done }
func (f *fakeAgent) NewStream(context.Context) (transport.Stream, error) {
	f.streams.Add(1)
	return nil, errors.New("no streams here")
}

// A session takes what an agent following the protocol sends about its
// updates, and no more: one release send per offer however often it is
// asked for, each status once per offer, and a few statuses about offers
// of other sessions. Each taken message is a goroutine and a store write
// (a send, a stream and the binary), so a hostile agent's flood must not
// be.
func TestHandleBoundsUpdateMessages(t *testing.T) {
	ctx := context.Background()
	u, dir := newTestRollouts(t, nil)
	publish(t, dir.Store, "2.0.0", store.Rollout{})

	rel := t.TempDir()
	if err := os.WriteFile(filepath.Join(rel, release.BinaryFile), []byte("binary"), 0o644); err != nil {
		t.Fatal(err)
	}
	a := &fakeAgent{done: make(chan struct{})}
	o := &offer{id: "o1", version: "2.0.0", rollout: 1, os: "linux", arch: "amd64", channel: release.DefaultChannel, dir: rel, announced: make(chan struct{})}
	close(o.announced)
	u.stateOf(a).offer = o

	for range 500 {
		u.Handle(ctx, a, &protocol.UpdateFetch{ID: "o1"})
	}
	for range 500 {
		u.Handle(ctx, a, &protocol.UpdateStatus{ID: "o1", Version: "2.0.0", State: protocol.UpdateDownloaded})
	}
	for range 2000 {
		u.Handle(ctx, a, &protocol.UpdateStatus{ID: "other", Version: "9.9.9", State: protocol.UpdateFailed, Reason: "apply"})
	}
	u.sends.Wait()

	if n := a.streams.Load(); n != 1 {
		t.Errorf("release sends for 500 fetches of one offer: %d, want 1", n)
	}
	count := func(kind string) int {
		t.Helper()
		recs, err := dir.Store.ListAudit(ctx, store.AuditFilter{Kind: kind})
		if err != nil {
			t.Fatal(err)
		}
		return len(recs)
	}
	if n := count(audit.UpdatePrefix + protocol.UpdateDownloaded); n != 1 {
		t.Errorf("records of 500 'downloaded' for one offer: %d, want 1", n)
	}
	if n := count(audit.UpdatePrefix + protocol.UpdateFailed); n != maxUnsolicited {
		t.Errorf("records of 2000 statuses naming no offer of the session: %d, want %d", n, maxUnsolicited)
	}
}

// newTestRollouts is Rollouts on a data directory of its own (SQLite),
// with agents as its live sessions.
func newTestRollouts(t testing.TB, agents []Agent) (*Rollouts, *datadir.Dir) {
	t.Helper()
	ctx := context.Background()
	dir, _, err := datadir.Open(ctx, t.TempDir(), datadir.Options{TrustDomain: "update.test"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dir.Close() })
	log := slog.New(slog.DiscardHandler)
	alog, err := audit.Open(ctx, dir.Store, filepath.Join(t.TempDir(), "audit.log"), log)
	if err != nil {
		t.Fatal(err)
	}
	return NewRollouts(Config{Dir: dir, Audit: alog, Logger: log, Now: time.Now, Agents: func() []Agent { return agents }}), dir
}

// publish records a release of version for linux/amd64 (stand-ins for its
// signed files: offering reads them, the agent checks them) and starts a
// rollout of it, ro's settings, to every agent.
func publish(t testing.TB, st *store.Store, version string, ro store.Rollout) int64 {
	t.Helper()
	ctx := context.Background()
	bin := "binary " + version
	sum := sha256.Sum256([]byte(bin))
	err := st.AddRelease(ctx, store.Release{Version: version, OS: "linux", Arch: "amd64", Channel: release.DefaultChannel, SHA256: hex.EncodeToString(sum[:]),
		Size: int64(len(bin)), ExpiresAt: time.Now().Add(time.Hour), KeyID: "k", PublishedAt: time.Now(),
		BinarySignature: []byte("sig"), Manifest: []byte("manifest"), ManifestSignature: []byte("sig")}, strings.NewReader(bin))
	if err != nil {
		t.Fatal(err)
	}
	ro.Version, ro.Percent, ro.State, ro.CreatedAt, ro.UpdatedAt = version, 100, store.RolloutActive, time.Now(), time.Now()
	id, err := st.AddRollout(ctx, ro)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// An agent already on a newer version is not offered an older release:
// it would refuse (not_newer). And such refusals, as those of agents that
// take no updates (no_keys), do not count towards halting a rollout:
// they say nothing about the release.
func TestRolloutLeavesNewerAgentsAlone(t *testing.T) {
	ctx := context.Background()
	older, newer := &fakeAgent{id: "old", version: "1.0.0"}, &fakeAgent{id: "new", version: "3.0.0"}
	u, dir := newTestRollouts(t, []Agent{older, newer})
	rid := publish(t, dir.Store, "2.0.1", store.Rollout{HaltAt: 0.5})
	if err := u.offerAll(ctx); err != nil {
		t.Fatal(err)
	}
	u.sends.Wait()
	if older.offers.Load() != 1 || newer.offers.Load() != 0 {
		t.Fatalf("offers of 2.0.1: %d to the agent on 1.0.0, %d to the one on 3.0.0; want 1 and 0", older.offers.Load(), newer.offers.Load())
	}

	set := func(agent, state, reason string) {
		t.Helper()
		if err := dir.Store.SetAgentUpdate(ctx, store.AgentUpdate{Agent: agent, Tenant: "acme", Version: "2.0.1", Rollout: rid, State: state, Reason: reason, UpdatedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	set("n1", protocol.UpdateRefused, release.ReasonNotNewer)
	set("n2", protocol.UpdateRefused, release.ReasonNoKeys)
	set("n3", protocol.UpdateRefused, release.ReasonNoKeys)
	set("old", protocol.UpdateSucceeded, "")
	ro, err := dir.Store.ActiveRollout(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if halted, err := u.checkHalt(ctx, ro); err != nil || halted {
		t.Fatalf("halted by the refusals of agents the release is not for: %v, %v", halted, err)
	}
	set("f1", protocol.UpdateFailed, release.ReasonApply)
	if halted, err := u.checkHalt(ctx, ro); err != nil || !halted {
		t.Fatalf("1 of the 2 agents the release is for failed, at a halt of 50%%: halted %v, %v", halted, err)
	}
}

// A rollout's batch counts the agents whose update is under way and not
// stale; an agent whose offer went stale (its session dropped, and it
// came back later) takes a new place, and waits for one like any other.
func TestRolloutBatchCountsStaleAgents(t *testing.T) {
	ctx := context.Background()
	busy, back := &fakeAgent{id: "busy"}, &fakeAgent{id: "back"}
	u, dir := newTestRollouts(t, []Agent{busy, back})
	rid := publish(t, dir.Store, "2.0.0", store.Rollout{Batch: 1})
	for _, s := range []store.AgentUpdate{
		{Agent: "busy", State: protocol.UpdateDownloading, UpdatedAt: time.Now()},
		{Agent: "back", State: protocol.UpdateOffered, UpdatedAt: time.Now().Add(-20 * time.Minute)},
	} {
		s.Tenant, s.Version, s.Rollout = "acme", "2.0.0", rid
		if err := dir.Store.SetAgentUpdate(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	if err := u.offerAll(ctx); err != nil {
		t.Fatal(err)
	}
	u.sends.Wait()
	if n := back.offers.Load(); n != 0 {
		t.Fatalf("batch 1 with one agent downloading: the agent whose offer went stale was offered %d times, want 0", n)
	}
}

// An agent that refused an offer as busy (an update of its own under way,
// its probation included) is offered the release again on the same
// session once busyRetry has passed, not before; before, only its next
// session was, which may be days away.
func TestRolloutOffersAgainAfterBusy(t *testing.T) {
	ctx := context.Background()
	a := &fakeAgent{id: "a1"}
	u, dir := newTestRollouts(t, []Agent{a})
	rid := publish(t, dir.Store, "2.0.0", store.Rollout{})
	round := func() int64 {
		t.Helper()
		if err := u.offerAll(ctx); err != nil {
			t.Fatal(err)
		}
		u.sends.Wait()
		return a.offers.Load()
	}
	if n := round(); n != 1 {
		t.Fatalf("offers: %d, want 1", n)
	}
	busy := func(at time.Time) {
		t.Helper()
		if err := dir.Store.SetAgentUpdate(ctx, store.AgentUpdate{Agent: "a1", Tenant: "acme", Version: "2.0.0", Rollout: rid,
			State: protocol.UpdateRefused, Reason: release.ReasonBusy, UpdatedAt: at}); err != nil {
			t.Fatal(err)
		}
	}
	busy(time.Now())
	if n := round(); n != 1 {
		t.Fatalf("offers right after a busy refusal: %d, want still 1", n)
	}
	busy(time.Now().Add(-busyRetry - time.Second))
	if n := round(); n != 2 {
		t.Fatalf("offers %v after a busy refusal: %d, want 2", busyRetry, n)
	}
	// Another refusal is final: not offered again.
	if err := dir.Store.SetAgentUpdate(ctx, store.AgentUpdate{Agent: "a1", Tenant: "acme", Version: "2.0.0", Rollout: rid,
		State: protocol.UpdateRefused, Reason: release.ReasonNoKeys, UpdatedAt: time.Now().Add(-time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if n := round(); n != 2 {
		t.Fatalf("offers after a final refusal: %d, want still 2", n)
	}
}

// A release removed after it was offered (release remove --force, once
// another rollout superseded its own) is not sent when the agent asks for
// it: no update stream is opened, so the agent receives no byte of it, let
// alone part of it; the agent is told at once that the release was
// removed (UpdateCancel, code unavailable, naming the version), so that it
// does not wait for a stream until its download timeout; and the send is
// audited as failed, saying why. So whether the release's row is gone from
// the store and its copy from the data directory (a removal through this
// relay), only the row (through another relay of the cluster, whose
// change has not reached this one yet), or only the copy's binary.
func TestRemovedReleaseIsNotSent(t *testing.T) {
	for _, tc := range []struct {
		name             string
		removeRow, files bool
	}{
		{"row and copy", true, true},
		{"row only", true, false},
		{"copy only", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			a := &fakeAgent{id: "a1", done: make(chan struct{}), cancels: make(chan *protocol.UpdateCancel, 10)}
			u, dir := newTestRollouts(t, []Agent{a})
			publish(t, dir.Store, "2.0.0", store.Rollout{})
			if err := u.offerAll(ctx); err != nil {
				t.Fatal(err)
			}
			u.sends.Wait()
			o := u.stateOf(a).offer
			if o == nil || a.offers.Load() != 1 {
				t.Fatalf("offers: %d, want 1", a.offers.Load())
			}
			bin := filepath.Join(o.dir, release.BinaryFile)
			if _, err := os.Stat(bin); err != nil {
				t.Fatalf("the offered release's copy: %v", err)
			}
			if tc.removeRow {
				publish(t, dir.Store, "3.0.0", store.Rollout{}) // supersedes 2.0.0's rollout
				if _, err := dir.Store.RemoveRelease(ctx, "2.0.0", time.Now().Add(-time.Hour), true); err != nil {
					t.Fatal(err)
				}
			}
			if tc.files {
				if err := os.Remove(bin); err != nil {
					t.Fatal(err)
				}
			}
			u.Handle(ctx, a, &protocol.UpdateFetch{ID: o.id})
			u.sends.Wait()
			if n := a.streams.Load(); n != 0 {
				t.Errorf("update streams opened for a removed release: %d, want 0", n)
			}
			select {
			case c := <-a.cancels:
				if c.ID != o.id || c.Version != "2.0.0" || c.Code != protocol.CodeUnavailable.String() || !strings.Contains(c.Message, "release 2.0.0 was removed") {
					t.Errorf("the agent was told %+v; want its offer %s cancelled, unavailable, saying release 2.0.0 was removed", c, o.id)
				}
			default:
				t.Error("the agent was not told the release was removed: it would wait for the binary until its download timeout")
			}
			recs, err := dir.Store.ListAudit(ctx, store.AuditFilter{Kind: audit.UpdateDownload})
			if err != nil {
				t.Fatal(err)
			}
			if len(recs) != 1 || recs[0].Outcome != "error" || !strings.Contains(fmt.Sprint(recs[0].Detail["error"]), "release 2.0.0 was removed") {
				t.Fatalf("download records: %+v; want one error saying the release was removed", recs)
			}
			if s, err := dir.Store.AgentUpdate(ctx, "a1", "2.0.0"); err == nil && s.State == protocol.UpdateDownloading {
				t.Errorf("the agent's state is %s for a release that was not sent", s.State)
			}
		})
	}
}

// An agent that refused a release because it was removed since it was
// offered (reason removed) is not offered it again by the same rollout,
// nor counted as failed towards halting it; a later rollout of the
// version (published again) offers it again.
func TestRolloutAfterRemovedRefusal(t *testing.T) {
	ctx := context.Background()
	a := &fakeAgent{id: "a1"}
	u, dir := newTestRollouts(t, []Agent{a})
	rid := publish(t, dir.Store, "2.0.0", store.Rollout{HaltAt: 0.5})
	round := func() int64 {
		t.Helper()
		if err := u.offerAll(ctx); err != nil {
			t.Fatal(err)
		}
		u.sends.Wait()
		return a.offers.Load()
	}
	if n := round(); n != 1 {
		t.Fatalf("offers: %d, want 1", n)
	}
	if err := dir.Store.SetAgentUpdate(ctx, store.AgentUpdate{Agent: "a1", Tenant: "acme", Version: "2.0.0", Rollout: rid,
		State: protocol.UpdateRefused, Reason: release.ReasonRemoved, UpdatedAt: time.Now().Add(-time.Hour)}); err != nil {
		t.Fatal(err)
	}
	ro, err := dir.Store.ActiveRollout(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if halted, err := u.checkHalt(ctx, ro); err != nil || halted {
		t.Fatalf("halted by a refusal of a removed release: %v, %v", halted, err)
	}
	u.forgetEnded()
	u.stateOf(a).offer = nil // a new session of the agent
	if n := round(); n != 1 {
		t.Fatalf("offers by the same rollout after the refusal: %d, want still 1", n)
	}
	ro.Version, ro.State, ro.CreatedAt = "2.0.0", store.RolloutActive, time.Now()
	if _, err := dir.Store.AddRollout(ctx, ro); err != nil {
		t.Fatal(err)
	}
	if n := round(); n != 2 {
		t.Fatalf("offers by a new rollout of the version: %d, want 2", n)
	}
}

// A refusal or failure for what reached the agent or for its host, not
// for the signed release (a download that failed, a damaged copy's size
// or hash, a binary that could not be put in place), is final for the rollout that offered it
// only: a new rollout of the version offers it again, once the cause is
// mended. A verdict on the release (its key, say) stays final.
func TestRolloutAfterTransientRefusal(t *testing.T) {
	for _, tc := range []struct {
		state, reason string
		again         bool
	}{
		{protocol.UpdateRefused, release.ReasonDownload, true},
		{protocol.UpdateRefused, release.ReasonSize, true},
		{protocol.UpdateRefused, release.ReasonHash, true},
		{protocol.UpdateFailed, release.ReasonApply, true},
		{protocol.UpdateRefused, release.ReasonKey, false},
		{protocol.UpdateRefused, release.ReasonSignature, false},
		{protocol.UpdateRolledBack, release.ReasonUnhealthy, false},
	} {
		t.Run(tc.state+"/"+tc.reason, func(t *testing.T) {
			ctx := context.Background()
			a := &fakeAgent{id: "a1"}
			u, dir := newTestRollouts(t, []Agent{a})
			rid := publish(t, dir.Store, "2.0.0", store.Rollout{})
			round := func() int64 {
				t.Helper()
				if err := u.offerAll(ctx); err != nil {
					t.Fatal(err)
				}
				u.sends.Wait()
				return a.offers.Load()
			}
			if n := round(); n != 1 {
				t.Fatalf("offers: %d, want 1", n)
			}
			if err := dir.Store.SetAgentUpdate(ctx, store.AgentUpdate{Agent: "a1", Tenant: "acme", Version: "2.0.0", Rollout: rid,
				State: tc.state, Reason: tc.reason, UpdatedAt: time.Now().Add(-time.Hour)}); err != nil {
				t.Fatal(err)
			}
			u.forgetEnded()
			u.stateOf(a).offer = nil // a new session of the agent
			if n := round(); n != 1 {
				t.Fatalf("offers by the same rollout after %s (%s): %d, want still 1", tc.state, tc.reason, n)
			}
			ro, err := dir.Store.ActiveRollout(ctx)
			if err != nil {
				t.Fatal(err)
			}
			ro.CreatedAt = time.Now()
			if _, err := dir.Store.AddRollout(ctx, ro); err != nil {
				t.Fatal(err)
			}
			u.forgetEnded()
			u.stateOf(a).offer = nil
			want := int64(1)
			if tc.again {
				want = 2
			}
			if n := round(); n != want {
				t.Fatalf("offers after a new rollout of the version, the agent having %s (%s): %d, want %d", tc.state, tc.reason, n, want)
			}
		})
	}
}
