package store

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// addTestRelease stores a release of version for platform (os/arch,
// channel stable) with binary bin.
func addTestRelease(t *testing.T, s *Store, version, platform string, bin []byte, sum string) Release {
	t.Helper()
	goos, arch, _ := strings.Cut(platform, "/")
	r := Release{Version: version, OS: goos, Arch: arch, Channel: "stable", SHA256: sum, Size: int64(len(bin)), ExpiresAt: t0.Add(time.Hour), PublishedAt: t0,
		BinarySignature: []byte("bsig"), Manifest: []byte("{}"), ManifestSignature: []byte("msig")}
	if err := s.AddRelease(ctx, r, bytes.NewReader(bin)); err != nil {
		t.Fatal(err)
	}
	return r
}

// blobParts counts the rows of blob sum.
func blobParts(t *testing.T, s *Store, sum string) int {
	t.Helper()
	var n int
	if err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM blobs WHERE sha256 = $1`, sum).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// RemoveRelease removes every platform of a version and the binaries no
// other release refers to: one shared with another version stays, and
// goes with the last release that refers to it. It appends a change
// naming the version. A version with no release is ErrNotFound.
func TestRemoveRelease(t *testing.T) { eachEngine(t, testRemoveRelease) }

func testRemoveRelease(t *testing.T, e engine) {
	s, _ := e.open(t)
	shared, sharedSum := binary(blobPart+10, 1) // over one part
	own, ownSum := binary(1000, 2)
	addTestRelease(t, s, "1.0.0", "linux/amd64", shared, sharedSum)
	addTestRelease(t, s, "1.0.0", "windows/amd64", own, ownSum)
	addTestRelease(t, s, "1.1.0", "linux/amd64", shared, sharedSum) // the same binary, published again
	before, err := s.LatestChange(ctx)
	if err != nil {
		t.Fatal(err)
	}

	rm, err := s.RemoveRelease(ctx, "1.0.0", t0, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(rm.Releases) != 2 || !slices.Equal(rm.Blobs, []string{ownSum}) || rm.BlobBytes != int64(len(own)) {
		t.Fatalf("removal: got %d releases, blobs %v (%d bytes); want 2, [%s] (%d bytes)", len(rm.Releases), rm.Blobs, rm.BlobBytes, ownSum, len(own))
	}
	if got, err := s.Releases(ctx, "1.0.0"); err != nil || len(got) != 0 {
		t.Fatalf("releases of 1.0.0 after the removal: %v, %v; want none", got, err)
	}
	if n := blobParts(t, s, ownSum); n != 0 {
		t.Errorf("the removed release's own binary has %d parts left, want 0", n)
	}
	if n := blobParts(t, s, sharedSum); n != 2 {
		t.Errorf("the binary 1.1.0 shares has %d parts, want 2", n)
	}
	if _, err := s.Release(ctx, "1.1.0", "linux", "amd64", "stable"); err != nil {
		t.Errorf("release 1.1.0: %v", err)
	}
	if _, err := s.OpenBlob(ctx, sharedSum); err != nil {
		t.Errorf("shared blob: %v", err)
	}
	changes, err := s.Changes(ctx, before, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(changes) != 1 || changes[0].Kind != ChangeRelease || changes[0].Subject != "1.0.0" {
		t.Errorf("changes: got %+v, want one %s of 1.0.0", changes, ChangeRelease)
	}

	if _, err := s.RemoveRelease(ctx, "1.0.0", t0, false); !errors.Is(err, ErrNotFound) {
		t.Errorf("second removal: got %v, want ErrNotFound", err)
	}
	if _, err := s.RemoveRelease(ctx, "1.1.0", t0, false); err != nil {
		t.Fatal(err)
	}
	if n := blobParts(t, s, sharedSum); n != 0 {
		t.Errorf("the shared binary has %d parts left once no release refers to it, want 0", n)
	}
	if _, err := s.OpenBlob(ctx, sharedSum); !errors.Is(err, ErrNotFound) {
		t.Errorf("blob of removed releases: got %v, want ErrNotFound", err)
	}
}

// A release the active rollout offers is not removed, force or not, and
// the refusal names the rollout; once another rollout supersedes it, it
// is. Agents offered it or downloading it since busySince hold it too,
// named, unless forced; older offers do not.
func TestRemoveReleaseRefusals(t *testing.T) { eachEngine(t, testRemoveReleaseRefusals) }

func testRemoveReleaseRefusals(t *testing.T, e engine) {
	s, _ := e.open(t)
	bin, sum := binary(100, 3)
	addTestRelease(t, s, "1.0.0", "linux/amd64", bin, sum)
	bin2, sum2 := binary(100, 4)
	addTestRelease(t, s, "2.0.0", "linux/amd64", bin2, sum2)
	id, err := s.AddRollout(ctx, Rollout{Version: "1.0.0", Percent: 100, CreatedAt: t0})
	if err != nil {
		t.Fatal(err)
	}
	for _, force := range []bool{false, true} {
		_, err := s.RemoveRelease(ctx, "1.0.0", t0, force)
		if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), fmt.Sprintf("rollout %d ", id)) {
			t.Errorf("removal (force %v) while rollout %d offers it: got %v, want ErrInUse naming the rollout", force, id, err)
		}
	}
	if rs, _ := s.Releases(ctx, "1.0.0"); len(rs) != 1 {
		t.Fatalf("a refused removal removed the release: %v", rs)
	}
	// Halted rollouts offer nothing; a superseded one neither.
	if _, err := s.AddRollout(ctx, Rollout{Version: "2.0.0", Percent: 100, CreatedAt: t0}); err != nil {
		t.Fatal(err)
	}
	busySince := t0.Add(-15 * time.Minute)
	for _, u := range []AgentUpdate{
		{Agent: "a1", Version: "1.0.0", State: "downloading", UpdatedAt: t0.Add(-time.Minute)},
		{Agent: "a2", Version: "1.0.0", State: "offered", UpdatedAt: t0.Add(-20 * time.Minute)}, // lost long ago
		{Agent: "a3", Version: "1.0.0", State: "applied", UpdatedAt: t0},                        // has the binary
	} {
		if err := s.SetAgentUpdate(ctx, u); err != nil {
			t.Fatal(err)
		}
	}
	_, err = s.RemoveRelease(ctx, "1.0.0", busySince, false)
	if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), "1 agents") || !strings.Contains(err.Error(), "a1") || strings.Contains(err.Error(), "a2") {
		t.Fatalf("removal while a1 downloads it: got %v, want ErrInUse naming a1 only", err)
	}
	if _, err := s.RemoveRelease(ctx, "1.0.0", busySince, true); err != nil {
		t.Fatalf("forced removal: %v", err)
	}
	if rs, _ := s.Releases(ctx, "1.0.0"); len(rs) != 0 {
		t.Fatalf("forced removal left %v", rs)
	}
}

// Pruning the agents' update states deletes those of versions no release
// and no active rollout has, but never an agent's newest: where it
// stands, which release status shows.
func TestPruneAgentUpdates(t *testing.T) { eachEngine(t, testPruneAgentUpdates) }

func testPruneAgentUpdates(t *testing.T, e engine) {
	s, _ := e.open(t)
	for i, v := range []string{"1.0.0", "1.1.0", "1.2.0"} {
		bin, sum := binary(100, byte(10+i))
		addTestRelease(t, s, v, "linux/amd64", bin, sum)
	}
	if _, err := s.AddRollout(ctx, Rollout{Version: "1.1.0", Percent: 100, CreatedAt: t0}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddRollout(ctx, Rollout{Version: "1.2.0", Percent: 100, CreatedAt: t0.Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	at := func(m int) time.Time { return t0.Add(time.Duration(m) * time.Minute) }
	for _, u := range []AgentUpdate{
		// a1 went 1.0.0 → 1.1.0 and is offered 1.2.0.
		{Agent: "a1", Version: "1.0.0", State: "succeeded", UpdatedAt: at(1)},
		{Agent: "a1", Version: "1.1.0", State: "succeeded", UpdatedAt: at(2)},
		{Agent: "a1", Version: "1.2.0", State: "offered", From: "1.1.0", UpdatedAt: at(3)},
		// a2 runs 1.0.0 and failed 1.1.0: its newest state is of 1.1.0.
		{Agent: "a2", Version: "1.0.0", State: "succeeded", UpdatedAt: at(1)},
		{Agent: "a2", Version: "1.1.0", State: "failed", UpdatedAt: at(2)},
		// a3 has only ever been on 1.0.0: that is its newest state.
		{Agent: "a3", Version: "1.0.0", State: "succeeded", UpdatedAt: at(1)},
		// a4 reported on a version never published, then was offered 1.1.0.
		{Agent: "a4", Version: "9.9.9", State: "refused", UpdatedAt: at(1)},
		{Agent: "a4", Version: "1.1.0", State: "offered", UpdatedAt: at(2)},
		// a5 reported only on that version: its newest.
		{Agent: "a5", Version: "9.9.9", State: "refused", UpdatedAt: at(1)},
	} {
		if err := s.SetAgentUpdate(ctx, u); err != nil {
			t.Fatal(err)
		}
	}
	rm, err := s.RemoveRelease(ctx, "1.0.0", t0, false)
	if err != nil {
		t.Fatal(err)
	}
	states := func() []string {
		us, err := s.AgentUpdates(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, u := range us {
			out = append(out, u.Agent+"@"+u.Version+"="+u.State)
		}
		slices.Sort(out)
		return out
	}
	want := []string{"a1@1.1.0=succeeded", "a1@1.2.0=offered", "a2@1.1.0=failed", "a3@1.0.0=succeeded", "a4@1.1.0=offered", "a5@9.9.9=refused"}
	if got := states(); !slices.Equal(got, want) || rm.AgentUpdates != 3 {
		t.Fatalf("after removing 1.0.0: %d pruned, states %v; want 3 pruned, %v", rm.AgentUpdates, got, want)
	}
	// 1.1.0 is no longer the active rollout's, but it has a release:
	// nothing more goes.
	if n, err := s.PruneAgentUpdates(ctx); err != nil || n != 0 {
		t.Fatalf("prune with every version released: %d, %v; want 0", n, err)
	}
	// a3 moves on: its 1.0.0 state is no longer its newest.
	if err := s.SetAgentUpdate(ctx, AgentUpdate{Agent: "a3", Version: "1.2.0", State: "succeeded", UpdatedAt: at(4)}); err != nil {
		t.Fatal(err)
	}
	if n, err := s.PruneAgentUpdates(ctx); err != nil || n != 1 {
		t.Fatalf("prune once a3 moved on: %d, %v; want 1", n, err)
	}
	want = []string{"a1@1.1.0=succeeded", "a1@1.2.0=offered", "a2@1.1.0=failed", "a3@1.2.0=succeeded", "a4@1.1.0=offered", "a5@9.9.9=refused"}
	if got := states(); !slices.Equal(got, want) {
		t.Fatalf("after the prune: %v; want %v", got, want)
	}
}

// PurgeTokens deletes the tokens that expired before the cutoff and the
// used-up ones created before it, with a change each; live tokens, and
// those expired or used up since, stay.
func TestPurgeTokens(t *testing.T) { eachEngine(t, testPurgeTokens) }

func testPurgeTokens(t *testing.T, e engine) {
	s, _ := e.open(t)
	if err := s.AddTenant(ctx, "acme", t0); err != nil {
		t.Fatal(err)
	}
	cutoff := t0.Add(-30 * 24 * time.Hour)
	for _, tk := range []Token{
		{ID: "expired-long-ago", CreatedAt: cutoff.Add(-48 * time.Hour), ExpiresAt: cutoff.Add(-time.Hour), MaxUses: 5},
		{ID: "expired-lately", CreatedAt: cutoff.Add(-48 * time.Hour), ExpiresAt: cutoff.Add(time.Hour), MaxUses: 5},
		{ID: "used-up-old", CreatedAt: cutoff.Add(-time.Hour), ExpiresAt: t0.Add(time.Hour), MaxUses: 1},
		{ID: "used-up-new", CreatedAt: cutoff.Add(time.Hour), ExpiresAt: t0.Add(time.Hour), MaxUses: 1},
		{ID: "live-old", CreatedAt: cutoff.Add(-time.Hour), ExpiresAt: t0.Add(time.Hour), MaxUses: 2},
	} {
		tk.Tenant, tk.SecretHash = "acme", hash(tk.ID)
		if err := s.AddToken(ctx, tk); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []string{"used-up-old", "used-up-new", "live-old"} {
		if _, err := s.ConsumeToken(ctx, id, matches(id), t0, nil); err != nil {
			t.Fatal(err)
		}
	}
	before, err := s.LatestChange(ctx)
	if err != nil {
		t.Fatal(err)
	}
	purged, err := s.PurgeTokens(ctx, cutoff)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, tk := range purged {
		ids = append(ids, tk.ID)
	}
	slices.Sort(ids)
	if want := []string{"expired-long-ago", "used-up-old"}; !slices.Equal(ids, want) {
		t.Fatalf("purged %v, want %v", ids, want)
	}
	left, err := s.ListTokens(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	ids = nil
	for _, tk := range left {
		ids = append(ids, tk.ID)
	}
	slices.Sort(ids)
	if want := []string{"expired-lately", "live-old", "used-up-new"}; !slices.Equal(ids, want) {
		t.Fatalf("left %v, want %v", ids, want)
	}
	changes, err := s.Changes(ctx, before, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(changes) != 2 || changes[0].Kind != ChangeToken || changes[0].Tenant != "acme" {
		t.Errorf("changes: %+v; want a %s of acme per token purged", changes, ChangeToken)
	}
	if again, err := s.PurgeTokens(ctx, cutoff); err != nil || len(again) != 0 {
		t.Errorf("second purge: %v, %v; want nothing", again, err)
	}
}

// A rollout started while its release is being removed (release rollout
// and release remove --force at the same moment, from two processes) ends
// one way or the other, never both: the rollout is refused (ErrNotFound)
// and the release removed, or the rollout starts and the removal is
// refused (ErrInUse, the active rollout offers it). Before, AddRollout did
// not look for the release in its own transaction: the caller's look came
// before the removal, and the rollout then offered a release that was gone.
func TestRolloutRemoveRace(t *testing.T) { eachEngine(t, testRolloutRemoveRace) }

func testRolloutRemoveRace(t *testing.T, e engine) {
	s, dsn := e.open(t)
	other, err := OpenDSN(ctx, dsn) // release remove runs in another process
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	var rolledOut, removed int
	for i := range 40 {
		version := fmt.Sprintf("1.0.%d", i)
		bin, sum := binary(100, byte(i))
		addTestRelease(t, s, version, "linux/amd64", bin, sum)
		start := make(chan struct{})
		var roErr, rerr error
		var wg sync.WaitGroup
		wg.Go(func() {
			<-start
			_, roErr = s.AddRollout(ctx, Rollout{Version: version, Percent: 100, CreatedAt: t0})
		})
		wg.Go(func() {
			<-start
			_, rerr = other.RemoveRelease(ctx, version, t0, true)
		})
		close(start)
		wg.Wait()
		switch {
		case roErr == nil && errors.Is(rerr, ErrInUse):
			rolledOut++
		case errors.Is(roErr, ErrNotFound) && rerr == nil:
			removed++
		default:
			t.Fatalf("round %d: rollout %v, removal %v; want one refused (rollout ErrNotFound, or removal ErrInUse) and the other done", i, roErr, rerr)
		}
		ro, err := s.ActiveRollout(ctx)
		if err != nil && !errors.Is(err, ErrNotFound) {
			t.Fatal(err)
		}
		if err == nil {
			if rs, err := s.Releases(ctx, ro.Version); err != nil || len(rs) == 0 {
				t.Fatalf("round %d: the active rollout %d offers %s, which has no release (%v)", i, ro.ID, ro.Version, err)
			}
		}
	}
	t.Logf("%d rollouts started, %d releases removed", rolledOut, removed)
}
