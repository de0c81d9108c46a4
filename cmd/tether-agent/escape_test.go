package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/agent"
	"github.com/tetherhq/tether/agent/accesslog"
	"github.com/tetherhq/tether/cmd/internal/cli"
	"github.com/tetherhq/tether/protocol"
)

// forged is text a relay chooses that, printed raw, would add a row to a
// table and hide what follows it on a terminal.
func forged(now time.Time) string {
	return "backend:x\n" + now.UTC().Format("2006-01-02T15:04:05.000Z") + "  r-2  backend:billing  db  ok  closed  10  20  1ms\x1b[8m\t\u2028"
}

// checkOneRowEach fails when out holds a raw control character or more
// lines than want.
func checkOneRowEach(t *testing.T, out string, want int) {
	t.Helper()
	if n := strings.Count(out, "\n"); n != want {
		t.Errorf("%d lines printed, want %d:\n%s", n, want, out)
	}
	for _, c := range []string{"\x1b", "\u2028"} {
		if strings.Contains(out, c) {
			t.Errorf("output holds a raw %q: %q", c, out)
		}
	}
	if !strings.Contains(out, `backend:x\n`) || !strings.Contains(out, `\x1b[8m\t\u2028`) {
		t.Errorf("output does not show the escaped text: %q", out)
	}
}

// The table of `tether-agent access-log` prints what the relay chose (the
// backend, the service, the request id) with its control characters
// escaped: one stream is one row. JSON prints the line as written.
func TestAccessLogTableEscapesRelayText(t *testing.T) {
	path := filepath.Join(t.TempDir(), "access.log")
	l := accesslog.New(accesslog.Options{Path: path, CommitDelay: -1})
	l.Open()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { l.Run(ctx) })
	now := time.Now()
	l.Add(accesslog.Record{Time: now, Request: "r-1", Backend: forged(now), Service: "db", Code: "ok", End: "closed"})
	cancel()
	wg.Wait()
	var out, errb bytes.Buffer
	if err := printAccessLog(path, filter{now: time.Now()}, cli.Table, &out, &errb); err != nil {
		t.Fatal(err)
	}
	checkOneRowEach(t, out.String(), 3) // the header, the start line, the stream
	out.Reset()
	if err := printAccessLog(path, filter{now: time.Now()}, cli.JSON, &out, &errb); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), `"backend":"backend:x\n`) {
		t.Errorf("json: %s; want the line as written", out.String())
	}
}

// `tether-agent status` prints a relay's rejection (LastError), its ids
// and its list with control characters escaped.
func TestStatusEscapesRelayText(t *testing.T) {
	now := time.Now()
	st := agent.Status{AgentID: "a1", Tenant: "acme", Report: protocol.Report{AgentVersion: "1.0"},
		Cluster: []protocol.RelayInfo{{ID: "r1\x1b[2J"}},
		Sessions: []agent.SessionStatus{{Slot: 0, Relay: "relay:7443", RelayID: "r1", State: agent.StateRetrying, Since: now,
			LastError: "relay refused this agent: not_allowed: " + forged(now)}}}
	var out bytes.Buffer
	printStatus(&out, st, now)
	s := out.String()
	if strings.Contains(s, "\x1b") || strings.Contains(s, "\u2028") {
		t.Errorf("status holds raw control characters: %q", s)
	}
	if !strings.Contains(s, `r1\x1b[2J`) || !strings.Contains(s, `not_allowed: backend:x\n`) {
		t.Errorf("status does not show the escaped text:\n%s", s)
	}
	// Summary lines, a blank line, the sessions' header and one row.
	if rows := strings.Split(strings.TrimSuffix(s, "\n"), "\n"); !strings.HasPrefix(rows[len(rows)-1], "0 ") || !strings.HasPrefix(rows[len(rows)-2], "SLOT") {
		t.Errorf("the session is not one row after the header:\n%s", s)
	}
}

// --verify's report lists the streams opened and not ended, and the table
// shows an open line as a row of its own.
func TestVerifyPrintsUnclosed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "access.log")
	l := accesslog.New(accesslog.Options{Path: path, CommitDelay: -1})
	l.Open()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { l.Run(ctx) })
	now := time.Now()
	l.Add(accesslog.Record{Time: now, Request: "r-long", Backend: "backend:x", Service: "db", Session: "s\n1", Opened: true})
	cancel()
	wg.Wait()
	res, err := accesslog.Verify(accesslog.VerifyOptions{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	printVerify(&out, res, accesslog.VerifyOptions{})
	if s := out.String(); !strings.Contains(s, "opened and not ended: 1 stream(s)") || !strings.Contains(s, "r-long") || !strings.Contains(s, `s\n1`) {
		t.Errorf("verify report:\n%s\nwant r-long listed as opened and not ended", s)
	}
	out.Reset()
	if err := printAccessLog(path, filter{now: time.Now(), service: "db"}, cli.Table, &out, &out); err != nil {
		t.Fatal(err)
	}
	if s := out.String(); !strings.Contains(s, "r-long") || !strings.Contains(s, "(opened)") {
		t.Errorf("table:\n%s\nwant the open line of r-long", s)
	}
}

// --verify --key checks a log anywhere (a copy, with --file) against a
// recorded fingerprint and says so; without --key it names the key the
// log starts from and says that it is not pinned; a log of an earlier
// version is said to be verified against the CA only.
func TestVerifyKeyFlag(t *testing.T) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	fp := accesslog.Fingerprint(key.Public().(ed25519.PublicKey))
	write := func(key ed25519.PrivateKey) string {
		path := filepath.Join(t.TempDir(), "access.log")
		l := accesslog.New(accesslog.Options{Path: path, CommitDelay: -1, Key: key})
		l.Open()
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		wg.Go(func() { l.Run(ctx) })
		l.Add(accesslog.Record{Time: time.Now(), Request: "r-1", Backend: "backend:x", Service: "db", Code: "ok", End: "closed"})
		cancel()
		wg.Wait()
		return path
	}
	path := write(key)
	for _, tc := range []struct {
		name  string
		args  []string
		code  int
		wants []string
	}{
		{"pinned", []string{"--key", "SHA256:" + strings.ToUpper(fp)}, 0, []string{"intact: 4 lines", "log key: signed by the pinned key " + fp}},
		{"not pinned", nil, 0, []string{"intact: 4 lines", "log key: signed by " + fp + ", the first key the log names; NOT PINNED"}},
		{"another key", []string{"--key", strings.Repeat("ab", 32)}, 1, []string{"BROKEN at access.log:2: key: the log's key is " + fp + ", not the pinned key", "pinned log key: " + strings.Repeat("ab", 32)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := run(t, nil, "", append([]string{"access-log", "--verify", "--file", path}, tc.args...)...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\n%s%s", code, tc.code, stdout, stderr)
			}
			for _, w := range tc.wants {
				if !strings.Contains(stdout, w) {
					t.Errorf("output lacks %q:\n%s", w, stdout)
				}
			}
		})
	}
	// A log of an earlier version: certificate-signed checkpoints only.
	res := accesslog.Result{Intact: true, Lines: 3, FirstSeq: 1, LastSeq: 3, Follows: accesslog.Genesis, Checkpoints: 1, Verified: 1, CertificatesChecked: true, CAOnly: 3, CleanStop: true}
	var out bytes.Buffer
	printVerify(&out, res, accesslog.VerifyOptions{Agent: "spiffe://tether.internal/tenant/acme/agent/a1"})
	if s := out.String(); !strings.Contains(s, "VERIFIED AGAINST THE CA ONLY") || strings.Contains(s, "log key:") {
		t.Errorf("verify report of an earlier version's log:\n%s", s)
	}
	res.KeyLines, res.FirstKey, res.Key, res.Pinned, res.Lines = 1, fp, fp, fp, 6
	out.Reset()
	printVerify(&out, res, accesslog.VerifyOptions{Agent: "spiffe://tether.internal/tenant/acme/agent/a1"})
	if s := out.String(); !strings.Contains(s, "the first 3 line(s), written by an earlier version of the agent, are verified against the CA only") {
		t.Errorf("verify report across the switch:\n%s", s)
	}
	// The status shows the fingerprint to record.
	out.Reset()
	printStatus(&out, agent.Status{AccessLog: path, AccessLogKey: fp}, time.Now())
	if s := out.String(); !strings.Contains(s, "access log key  "+fp) {
		t.Errorf("status:\n%s\nwant the access log key's fingerprint", s)
	}
}

// --verify of the config's own log holds it to the mark in the state
// directory: a log cut back to an earlier clean stop is reported as
// removed. A copy given with --file is not held to it.
func TestVerifyMark(t *testing.T) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "access-log", "access.log")
	write := func() {
		l := accesslog.New(accesslog.Options{Path: path, CommitDelay: -1, Key: key, Mark: filepath.Join(dir, agent.LogMarkFile)})
		l.Open()
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		wg.Go(func() { l.Run(ctx) })
		l.Add(accesslog.Record{Time: time.Now(), Request: "r-1", Backend: "backend:x", Service: "db", Code: "ok", End: "closed"})
		cancel()
		wg.Wait()
	}
	write()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	write()
	if err := os.Truncate(path, fi.Size()); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(cfg, []byte("state_dir: "+dir+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := run(t, nil, "", "access-log", "--verify", "--config", cfg)
	if code != 1 || !strings.Contains(stdout, "BROKEN at access.log:5: removed: the log ends at seq 4, but the agent had written a checkpoint at seq 8") {
		t.Errorf("verify --config of a log cut back: exit %d\n%s%s\nwant 1, removed at access.log:5", code, stdout, stderr)
	}
	if code, stdout, stderr := run(t, nil, "", "access-log", "--verify", "--file", path); code != 0 {
		t.Errorf("verify --file of the same log (a copy): exit %d\n%s%s\nwant 0", code, stdout, stderr)
	}
	// The agent starts again on the cut log: its start line records the
	// cut, and verify, which finds the chain intact from there, says so.
	write()
	code, stdout, stderr = run(t, nil, "", "access-log", "--verify", "--config", cfg)
	if code != 0 || !strings.Contains(stdout, "intact: ") || !strings.Contains(stdout, "ALTERED BEFORE 1 START(S) of the agent") ||
		!strings.Contains(stdout, "access.log:5 seq 5 at ") || !strings.Contains(stdout, "the lines after seq 4 were removed") {
		t.Errorf("verify --config once the agent started again on the cut log: exit %d\n%s%s\nwant 0, intact, and the start line's note of the cut", code, stdout, stderr)
	}
}

// --verify of the config's own log reports the records a stop could not
// write: from the state directory's record of that stop until the next
// start writes them to the log, then from the lost line (text and -o
// json). A copy given with --file is not held to the record.
func TestVerifyLostAtStop(t *testing.T) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	logDir := filepath.Join(dir, "access-log")
	path := filepath.Join(logDir, "access.log")
	write := func(n int) {
		l := accesslog.New(accesslog.Options{Path: path, CommitDelay: -1, RetryInterval: time.Hour, Key: key,
			Mark: filepath.Join(dir, agent.LogMarkFile), StopLosses: filepath.Join(dir, agent.LogLostFile)})
		l.Open()
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		wg.Go(func() { l.Run(ctx) })
		for i := range n {
			l.Add(accesslog.Record{Time: time.Now(), Request: fmt.Sprintf("r-%d", i), Backend: "backend:x", Service: "db", Code: "ok", End: "closed"})
		}
		cancel()
		wg.Wait()
	}
	write(1)
	// A run that cannot write the log: its directory is a file.
	if err := os.Rename(logDir, logDir+".aside"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(logDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	write(3)
	if err := os.Remove(logDir); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(logDir+".aside", logDir); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(cfg, []byte("state_dir: "+dir+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := run(t, nil, "", "access-log", "--verify", "--config", cfg)
	if code != 0 || !strings.Contains(stdout, "LOST AT STOP, NOT IN THE LOG YET: 1 stop(s)") || !strings.Contains(stdout, ": 3 record(s) lost: create directory: mkdir ") {
		t.Errorf("verify --config after a stop that could not write: exit %d\n%s%s\nwant 0 and the 3 records lost at the stop", code, stdout, stderr)
	}
	var res accesslog.Result
	code, stdout, stderr = run(t, nil, "", "access-log", "--verify", "--config", cfg, "-o", "json")
	if err := json.Unmarshal([]byte(stdout), &res); code != 0 || err != nil || len(res.LostAtStop) != 1 || res.LostAtStop[0].Lost != 3 {
		t.Errorf("verify --config -o json after a stop that could not write: exit %d, %v\n%s%s\nwant lost_at_stop with 3 records", code, err, stdout, stderr)
	}
	if code, stdout, stderr := run(t, nil, "", "access-log", "--verify", "--file", path); code != 0 || strings.Contains(stdout, "LOST") {
		t.Errorf("verify --file (a copy): exit %d\n%s%s\nwant 0, and nothing of the state directory's record", code, stdout, stderr)
	}
	write(0)
	code, stdout, stderr = run(t, nil, "", "access-log", "--verify", "--config", cfg)
	if code != 0 || !strings.Contains(stdout, "LOST: 3 record(s) of streams could not be written (1 lost line(s))") ||
		!strings.Contains(stdout, "access.log:7 seq 7 at ") || strings.Contains(stdout, "NOT IN THE LOG YET") {
		t.Errorf("verify --config once the agent started again: exit %d\n%s%s\nwant 0 and the lost line of the 3 records", code, stdout, stderr)
	}
	res = accesslog.Result{}
	code, stdout, stderr = run(t, nil, "", "access-log", "--verify", "--config", cfg, "-o", "json")
	if err := json.Unmarshal([]byte(stdout), &res); code != 0 || err != nil || res.Lost != 3 || res.LostLineCount != 1 || len(res.LostAtStop) != 0 {
		t.Errorf("verify --config -o json once the agent started again: exit %d, %v\n%s%s\nwant lost 3 in 1 line", code, err, stdout, stderr)
	}
}

// access-log --rotate-key replaces the log key of the config's state
// directory; --verify then reports the keys in force, from the first
// (the pin), and the log intact; the fingerprint printed is the new
// key's.
func TestRotateKeyAndVerify(t *testing.T) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	if err := os.WriteFile(filepath.Join(dir, agent.LogKeyFile), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(cfg, []byte("state_dir: "+dir+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fp0 := accesslog.Fingerprint(key.Public().(ed25519.PublicKey))
	code, stdout, stderr := run(t, nil, "", "access-log", "--rotate-key", "--config", cfg)
	fp1, _ := agent.LogKeyFingerprint(dir)
	if code != 0 || fp1 == fp0 || !strings.Contains(stdout, fp0+" -> "+fp1) {
		t.Fatalf("access-log --rotate-key: exit %d\n%s%s", code, stdout, stderr)
	}
	code, stdout, stderr = run(t, nil, "", "access-log", "--verify", "--config", cfg)
	if code != 0 || !strings.Contains(stdout, "signed by the pinned key "+fp0) || !strings.Contains(stdout, "log keys, oldest first:") ||
		!strings.Contains(stdout, fp1+"  from access.log:") || !strings.Contains(stdout, "introduced by a key line signed by the key before it") {
		t.Fatalf("verify after --rotate-key: exit %d\n%s%s", code, stdout, stderr)
	}
	if code, _, stderr := run(t, nil, "", "access-log", "--rotate-key", "--verify", "--config", cfg); code != 2 {
		t.Fatalf("--rotate-key --verify: exit %d, %s; want a usage error", code, stderr)
	}
}
