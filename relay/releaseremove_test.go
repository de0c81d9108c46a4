package relay

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/internal/pgtest"
	"github.com/tetherhq/tether/protocol/release"
	"github.com/tetherhq/tether/relay/admin"
	"github.com/tetherhq/tether/relay/internal/audit"
	"github.com/tetherhq/tether/relay/internal/store"
)

// signedRelease signs a stand-in agent binary of version for linux/amd64
// with a key of its own into a directory, as release sign does.
func signedRelease(t *testing.T, version string) string {
	t.Helper()
	priv, _, err := release.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	key, err := release.ParsePrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "tether-agent")
	if err := os.WriteFile(bin, []byte("agent binary "+version), 0o600); err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	m := release.Manifest{Version: version, OS: "linux", Arch: "amd64", Channel: release.DefaultChannel, Expires: time.Now().Add(24 * time.Hour).Truncate(time.Second)}
	if _, err := release.SignFile(key, m, bin, out); err != nil {
		t.Fatal(err)
	}
	return out
}

// copyOf is where relay r keeps its copy of version's linux/amd64 files.
func copyOf(r *Relay, version string) string {
	return filepath.Join(r.cfg.DataDir, "releases", version, "linux-amd64-"+release.DefaultChannel)
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// waitGone waits until path no longer exists.
func waitGone(t *testing.T, path, what string) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); exists(path); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s is still there", what, path)
		}
	}
}

// In a cluster (PostgreSQL), a release the active rollout offers is not
// removed, and the refusal names the rollout; once another rollout
// supersedes it, removing it through one relay removes that relay's copy
// of its files at once, another running relay's when the change reaches
// it, and a stopped relay's at its next start; the copies of the release
// still published stay, and the removal is audited.
func TestClusterReleaseRemoval(t *testing.T) {
	ctx := context.Background()
	pg := pgtest.Start(t)
	kek := make([]byte, 32)
	rand.Read(kek)
	cfg := func(id, dir string) Config {
		return Config{DataDir: dir, Store: pg.DSN(), CAKEK: kek, RelayID: id,
			AgentListen: "127.0.0.1:0", SOCKSListen: Off, ConnectListen: Off,
			ClusterHeartbeat: 100 * time.Millisecond, ClusterDeadAfter: 600 * time.Millisecond,
			ChangePoll: 100 * time.Millisecond, DrainTimeout: 100 * time.Millisecond}
	}
	r1 := runRelay(t, cfg("relay-1", t.TempDir()))
	r2 := runRelay(t, cfg("relay-2", t.TempDir()))
	dir3 := t.TempDir()
	r3, stop3 := startRelay(t, cfg("relay-3", dir3))

	var rels []store.Release
	for _, v := range []string{"2.0.0", "2.1.0"} {
		if _, err := r1.adm.PublishRelease(ctx, signedRelease(t, v), nil); err != nil {
			t.Fatal(err)
		}
		rs, err := r1.dir.Store.Releases(ctx, v)
		if err != nil || len(rs) != 1 {
			t.Fatalf("releases of %s: %v, %v", v, rs, err)
		}
		rels = append(rels, rs[0])
	}
	// The other relays write their copies as they would to offer them.
	for _, r := range []*Relay{r2, r3} {
		for _, rel := range rels {
			if _, err := r.dir.ReleaseFiles(ctx, rel); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, r := range []*Relay{r1, r2, r3} {
		for _, v := range []string{"2.0.0", "2.1.0"} {
			if !exists(filepath.Join(copyOf(r, v), release.BinaryFile)) {
				t.Fatalf("%s has no copy of %s", r.cfg.RelayID, v)
			}
		}
	}
	stop3()

	ro, _, err := r1.adm.StartRollout(ctx, admin.Rollout{Version: "2.0.0", Percent: 100})
	if err != nil {
		t.Fatal(err)
	}
	_, err = r2.adm.RemoveRelease(ctx, "2.0.0", true)
	if !errors.Is(err, admin.ErrInUse) || !strings.Contains(err.Error(), fmt.Sprintf("rollout %d ", ro.ID)) {
		t.Fatalf("removal of the active rollout's release, forced: got %v, want ErrInUse naming rollout %d", err, ro.ID)
	}
	if !exists(copyOf(r2, "2.0.0")) {
		t.Fatal("a refused removal removed the relay's copy")
	}
	if _, _, err := r1.adm.StartRollout(ctx, admin.Rollout{Version: "2.1.0", Percent: 100}); err != nil {
		t.Fatal(err)
	}

	rm, err := r1.adm.RemoveRelease(ctx, "2.0.0", false)
	if err != nil {
		t.Fatal(err)
	}
	if len(rm.Releases) != 1 || rm.BlobsRemoved != 1 || rm.BytesFreed != rels[0].Size {
		t.Errorf("removal: %+v; want one release and its binary of %d bytes", rm, rels[0].Size)
	}
	if exists(filepath.Join(r1.cfg.DataDir, "releases", "2.0.0")) {
		t.Error("the removing relay still has its copy")
	}
	waitGone(t, filepath.Join(r2.cfg.DataDir, "releases", "2.0.0"), "the other running relay, through the change feed")
	if !exists(copyOf(r2, "2.1.0")) || !exists(copyOf(r1, "2.1.0")) {
		t.Error("a copy of the release still published was removed")
	}
	if _, err := r1.dir.ReleaseFiles(ctx, rels[0]); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a copy of the removed release written again from the store: got %v, want ErrNotFound", err)
	}

	// The stopped relay missed the change: it removes its copy at start.
	if !exists(copyOf(r3, "2.0.0")) {
		t.Fatal("the stopped relay's copy went before its start")
	}
	r3 = runRelay(t, cfg("relay-3", dir3))
	waitGone(t, filepath.Join(dir3, "releases", "2.0.0"), "the relay stopped during the removal, at its start")
	if !exists(copyOf(r3, "2.1.0")) {
		t.Error("the restarted relay removed its copy of the release still published")
	}

	recs, err := r1.dir.Store.ListAudit(ctx, store.AuditFilter{Kind: audit.ReleaseRemove})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].Detail["version"] != "2.0.0" || recs[0].Actor != "operator" {
		t.Fatalf("audit of the removal: %+v; want one release.remove of 2.0.0 by the operator", recs)
	}
}

// At its start (and every housekeeping), a relay deletes the join tokens
// that expired, or were used up, longer ago than TokenRetention, with a
// token.purge record naming the tenant and the tokens; newer ones stay,
// and with TokenRetention negative every one does.
func TestRelayPurgesOldJoinTokens(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	cfg := Config{DataDir: dir, AgentListen: "127.0.0.1:0", SOCKSListen: Off, ConnectListen: Off, DrainTimeout: 100 * time.Millisecond}
	r, stop := startRelay(t, cfg)
	if err := r.dir.Store.AddTenant(ctx, "acme", time.Now()); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for _, tk := range []store.Token{
		{ID: "old", CreatedAt: now.Add(-60 * 24 * time.Hour), ExpiresAt: now.Add(-31 * 24 * time.Hour), MaxUses: 1},
		{ID: "recent", CreatedAt: now.Add(-60 * 24 * time.Hour), ExpiresAt: now.Add(-29 * 24 * time.Hour), MaxUses: 1},
		{ID: "live", CreatedAt: now, ExpiresAt: now.Add(time.Hour), MaxUses: 1},
	} {
		tk.Tenant, tk.SecretHash = "acme", []byte("hash of "+tk.ID)
		if err := r.dir.Store.AddToken(ctx, tk); err != nil {
			t.Fatal(err)
		}
	}
	stop()

	ids := func(r *Relay) []string {
		ts, err := r.dir.Store.ListTokens(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, tk := range ts {
			out = append(out, tk.ID)
		}
		return out
	}
	// With a negative retention, nothing goes: the relay tidies the store
	// at its start, on a goroutine; the same tidying is run here, to be
	// waited on.
	keep := cfg
	keep.TokenRetention = -1
	r, stop = startRelay(t, keep)
	r.tidyStore(ctx, time.Now())
	if got := ids(r); len(got) != 3 {
		t.Fatalf("with a negative retention: tokens %v, want all 3", got)
	}
	stop()

	r = runRelay(t, cfg)
	for deadline := time.Now().Add(15 * time.Second); len(ids(r)) != 2; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("tokens after the start: %v, want recent and live", ids(r))
		}
	}
	if got := strings.Join(ids(r), ","); got != "live,recent" && got != "recent,live" {
		t.Fatalf("tokens left: %s, want live and recent", got)
	}
	var recs []store.AuditRecord
	for deadline := time.Now().Add(15 * time.Second); len(recs) == 0; time.Sleep(20 * time.Millisecond) {
		var err error
		if recs, err = r.dir.Store.ListAudit(ctx, store.AuditFilter{Kind: audit.TokenPurge}); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatal("no token.purge record")
		}
	}
	if len(recs) != 1 || recs[0].Tenant != "acme" || recs[0].Actor != "relay" || fmt.Sprint(recs[0].Detail["tokens"]) != "[old]" {
		t.Fatalf("audit of the purge: %+v; want one token.purge of acme's token old by the relay", recs)
	}
}
