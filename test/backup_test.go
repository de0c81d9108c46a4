package test

import (
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// A backup taken while the relay serves and agents enrol (admin commands
// and enrolments writing to the store as it is copied) restores to a
// relay that an existing agent reconnects to and serves through; the
// restored relay's first start catches up from the audit file kept from
// the directory it replaced — an agent revoked after the backup stays
// revoked, agents enrolled during and after the backup are known — and
// spends the backup's unused join token.
func TestBackupWhileServingAndRestore(t *testing.T) {
	r := startRelay(t, relayOpts{})
	r.addTenant(t, "acme")
	d := r.backend(t, "billing", "acme")
	echoAddr := tcpService(t, echo)
	startAgent(t, r, "acme", agentOpts{services: map[string]string{"echo": echoAddr}})
	b := startAgent(t, r, "acme", agentOpts{services: map[string]string{"echo": echoAddr}})
	check := func(step string) {
		t.Helper()
		c := waitDial(t, d, "echo.acme.tether:7", 30*time.Second)
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, step+"\n")
		if got, err := readLine(c); err != nil || got != step {
			t.Fatalf("%s: echo got %q, %v", step, got, err)
		}
	}
	check("before the backup")
	unused := r.token(t, "acme") // made before the backup, used by nobody

	// Enrolments and admin writes while the backup runs.
	stop := make(chan struct{})
	var mu sync.Mutex // guards enrolled, errs
	var enrolled, errs []string
	var wg sync.WaitGroup
	first := make(chan struct{})
	firstDone := sync.OnceFunc(func() { close(first) })
	wg.Go(func() {
		defer firstDone()
		for {
			select {
			case <-stop:
				return
			default:
			}
			tok, stderr, err := runCmd(t, bins.relay, "token", "create", "--tenant", "acme", "--data-dir", r.dataDir)
			if err != nil {
				mu.Lock()
				errs = append(errs, fmt.Sprintf("token create: %v: %s", err, stderr))
				mu.Unlock()
				return
			}
			tokenFile := filepath.Join(t.TempDir(), "token")
			os.WriteFile(tokenFile, []byte(strings.TrimSpace(tok)+"\n"), 0o600)
			id, stderr, err := runCmd(t, bins.agent, "enroll", "--relay", r.agentAddr, "--token-file", tokenFile, "--state-dir", filepath.Join(t.TempDir(), "state"))
			mu.Lock()
			if err != nil {
				errs = append(errs, fmt.Sprintf("enroll: %v: %s", err, stderr))
			} else {
				enrolled = append(enrolled, strings.TrimSpace(id))
			}
			mu.Unlock()
			firstDone()
		}
	})
	<-first
	dest := filepath.Join(t.TempDir(), "backup")
	out, stderr, err := runCmd(t, bins.relay, "backup", dest, "--data-dir", r.dataDir)
	if err != nil {
		close(stop)
		wg.Wait()
		t.Fatalf("backup: %v\n%s", err, stderr)
	}
	// One more enrolment after the backup, then stop writing.
	mu.Lock()
	n := len(enrolled)
	mu.Unlock()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		mu.Lock()
		more := len(enrolled) > n || len(errs) > 0
		mu.Unlock()
		if more || time.Now().After(deadline) {
			break
		}
	}
	close(stop)
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("writes during the backup failed: %v", errs)
	}
	t.Logf("backup:\n%s", out)
	if !strings.Contains(out, "backup written to "+dest) || !strings.Contains(out, "tether.db") || !strings.Contains(out, "ca/ca.key") {
		t.Fatalf("backup printed:\n%s", out)
	}
	verified := mustRun(t, bins.relay, "backup", "--verify", dest)
	if !strings.Contains(verified, "verified") {
		t.Fatalf("backup --verify printed:\n%s", verified)
	}

	// After the backup: agent b is revoked; the relay closes its
	// sessions and it stops for good.
	r.admin(t, "agent", "revoke", b.id, "--reason", "decommissioned")
	b.waitOutput("the relay refused this agent for good", 20*time.Second)

	// Restore: stop the relay, move its directory aside, put the backup
	// in its place with the old directory's audit log, start it.
	if err := r.stop(15 * time.Second); err != nil {
		t.Fatalf("stop relay: %v", err)
	}
	old := r.dataDir + ".old"
	if err := os.Rename(r.dataDir, old); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(old) })
	if err := os.Rename(dest, r.dataDir); err != nil {
		t.Fatal(err)
	}
	auditLog, err := os.ReadFile(filepath.Join(old, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(r.dataDir, "audit.log"), auditLog, 0o600); err != nil {
		t.Fatal(err)
	}
	r.restart()
	waitCount(t, r.proc, `"msg":"relay serving"`, 2, 30*time.Second)
	if !strings.Contains(r.out.String(), "restored from a backup") {
		t.Fatalf("the restored relay did not say it starts on a backup:\n%s", r.out.String())
	}

	// The existing agent reconnects to the restored relay and serves.
	check("after the restore")

	// The revocation after the backup holds: b, started again, is
	// refused as revoked.
	var shown struct {
		RevokedAt string `json:"revoked_at"`
	}
	if err := json.Unmarshal([]byte(r.admin(t, "agent", "show", b.id, "-o", "json")), &shown); err != nil || shown.RevokedAt == "" {
		t.Fatalf("agent %s revoked after the backup: revoked_at %q, %v", b.id, shown.RevokedAt, err)
	}
	b.restart()
	waitCount(t, b.proc, "the relay refused this agent for good", 2, 30*time.Second)
	lines := strings.Split(b.out.String(), "\n")
	last := lines[slices.IndexFunc(lines, func(l string) bool { return strings.Contains(l, "refused this agent for good") })]
	for _, l := range lines {
		if strings.Contains(l, "refused this agent for good") {
			last = l
		}
	}
	if !strings.Contains(last, "revoked") {
		t.Fatalf("agent %s was not refused as revoked after the restore:\n%s", b.id, b.out.String())
	}

	// Every agent enrolled while and after the backup was taken is known.
	var agents []struct{ ID string }
	if err := json.Unmarshal([]byte(r.admin(t, "agent", "list", "-o", "json")), &agents); err != nil {
		t.Fatal(err)
	}
	for _, id := range enrolled {
		if !slices.ContainsFunc(agents, func(a struct{ ID string }) bool { return a.ID == id }) {
			t.Errorf("agent %s, enrolled during or after the backup, is unknown to the restored relay", id)
		}
	}

	// The backup's unused join token enrols nobody: it may have been
	// used since the backup.
	tokenFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokenFile, []byte(unused+"\n"), 0o600)
	if _, stderr, err := runCmd(t, bins.agent, "enroll", "--relay", r.agentAddr, "--token-file", tokenFile, "--state-dir", filepath.Join(t.TempDir(), "state")); err == nil {
		t.Fatal("the backup's join token enrolled an agent after the restore")
	} else if !strings.Contains(stderr, "token_used_up") {
		t.Fatalf("enrolment with the backup's token refused with: %s", stderr)
	}
	// A restart is not a restore again.
	r.stop(15 * time.Second)
	r.restart()
	waitCount(t, r.proc, `"msg":"relay serving"`, 3, 30*time.Second)
	if n := strings.Count(r.out.String(), "restored from a backup"); n != 1 {
		t.Fatalf("the restore was handled %d times, want once", n)
	}
	check("after a restart")
}

// A backup killed at any moment leaves no destination, or a complete one
// that verifies: never a destination that looks complete and is not. A
// relay on PostgreSQL is refused, with what to do instead.
func TestBackupKilledAndRefused(t *testing.T) {
	r := startRelay(t, relayOpts{})
	r.addTenant(t, "acme")
	for range 3 {
		r.token(t, "acme")
	}
	parent := t.TempDir()
	for i := range 6 {
		dest := filepath.Join(parent, fmt.Sprintf("b%d", i))
		p := start(t, "backup", bins.relay, "backup", dest, "--data-dir", r.dataDir)
		time.Sleep(time.Duration(i) * 15 * time.Millisecond)
		p.kill()
		if _, err := os.Stat(dest); err == nil {
			if _, stderr, err := runCmd(t, bins.relay, "backup", "--verify", dest); err != nil {
				t.Fatalf("a killed backup left %s, which does not verify: %s", dest, stderr)
			}
		}
	}
	// Whatever partial directories the kills left are not backups.
	entries, _ := os.ReadDir(parent)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	t.Logf("left by the killed backups: %v", names)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			if _, _, err := runCmd(t, bins.relay, "backup", "--verify", filepath.Join(parent, e.Name())); err == nil {
				t.Fatalf("the partial directory %s verifies as a backup", e.Name())
			}
		}
	}

	dest := filepath.Join(parent, "pg")
	_, stderr, err := runCmd(t, bins.relay, "backup", dest, "--data-dir", r.dataDir, "--store", "postgres://tether@127.0.0.1:1/tether")
	if err == nil || !strings.Contains(stderr, "pg_dump") || !strings.Contains(stderr, "key-encryption key") {
		t.Fatalf("backup of a PostgreSQL store: %v, %s", err, stderr)
	}
	if _, err := os.Stat(dest); err == nil {
		t.Fatal("a refused backup wrote its destination")
	}
}

// copyDir copies the directory src to dst with each file's mode, as cp -a
// would.
func copyDir(t *testing.T, dst, src string) {
	t.Helper()
	err := filepath.WalkDir(src, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		info, err := e.Info()
		if err != nil {
			return err
		}
		if e.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), info.Mode().Perm())
		}
		raw, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), raw, info.Mode().Perm())
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A relay restored from a backup older than an agent's renewal, without
// the audit log that recorded it (lost with the old disk), accepts the
// agent's renewed certificate — the relay issued it between the backup
// and the restore, and it is newer than the one on record — and records
// it as the agent's newest: the agent serves at once instead of being
// refused as superseded. A copy of the agent's older key pair, the one
// the backup knew, is refused from then on.
func TestRestoreKeepsRenewedAgents(t *testing.T) {
	r := startRelay(t, relayOpts{extra: []string{"--agent-cert-lifetime", "45s"}})
	r.addTenant(t, "acme")
	d := r.backend(t, "billing", "acme")
	echoAddr := tcpService(t, echo)
	a := startAgent(t, r, "acme", agentOpts{services: map[string]string{"echo": echoAddr}})
	check := func(step string) {
		t.Helper()
		c := waitDial(t, d, "echo.acme.tether:7", 30*time.Second)
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, step+"\n")
		if got, err := readLine(c); err != nil || got != step {
			t.Fatalf("%s: echo got %q, %v", step, got, err)
		}
	}
	check("before the backup")
	oldState := filepath.Join(t.TempDir(), "old-state")
	copyDir(t, oldState, a.stateDir) // the key pair the backup will know
	dest := filepath.Join(t.TempDir(), "backup")
	mustRun(t, bins.relay, "backup", dest, "--data-dir", r.dataDir)

	a.waitOutput(`"msg":"certificate renewed"`, 60*time.Second)
	if err := r.stop(15 * time.Second); err != nil {
		t.Fatalf("stop relay: %v", err)
	}
	// The old disk is gone, its audit log with it.
	if err := os.RemoveAll(r.dataDir); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(dest, r.dataDir); err != nil {
		t.Fatal(err)
	}
	r.restart()
	waitCount(t, r.proc, `"msg":"relay serving"`, 2, 30*time.Second)
	check("after the restore")
	if !strings.Contains(r.out.String(), "accepted a certificate the relay issued between the backup") {
		t.Fatalf("the relay did not say it took the agent's renewed certificate:\n%s", r.out.String())
	}
	// The key pair of the backup's time, copied, is superseded now.
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	raw, err := os.ReadFile(a.config)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg, []byte(strings.ReplaceAll(string(raw), a.stateDir, oldState)), 0o600); err != nil {
		t.Fatal(err)
	}
	stale := start(t, "stale agent", bins.agent, "run", "--config", cfg)
	stale.waitOutput("certificate_superseded", 30*time.Second)
	check("with the stale copy refused")
}
