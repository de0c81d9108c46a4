package accesslog

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func refusal(i int, service string) Record {
	return Record{Time: time.Now(), Request: fmt.Sprintf("ref-%05d", i), Backend: "backend:x", Service: service, Code: "unknown_service",
		End: EndRefused, Relay: "relay:7443", Session: "s1", Message: "no such service"}
}

// Refused streams beyond the budget (a burst, then one per RefusalEvery)
// have no line each: they are counted by service, backend and code, at
// most maxRefusalKeys of them apart and the rest together, in `refusals` lines with
// the first one's request id; every refusal is accounted for, the
// records of served streams are all there, and the log verifies.
func TestRefusalsBeyondBudgetSummarised(t *testing.T) {
	ca := newTestCA(t)
	cert := leaf(t, ca, testAgent)
	path := filepath.Join(t.TempDir(), "access.log")
	l := startLog(t, Options{Path: path, RefusalBurst: 5, RefusalEvery: time.Hour, Certificate: func() *tls.Certificate { return cert }, Agent: testAgent})
	n := 0
	for range 5 { // the burst: a line each
		l.Add(refusal(n, "nosuch"))
		n++
	}
	l.Add(record(0))
	for i := range 20 * 10 { // 20 services, 10 refusals each, interleaved
		l.Add(refusal(n, fmt.Sprintf("svc-%02d", i%20)))
		n++
	}
	l.Add(record(1))
	l.stop()
	var refused, served, counted uint64
	var sums []Entry
	for _, e := range entries(t, path) {
		switch {
		case e.Type == TypeStream && e.End == EndRefused:
			refused++
		case e.Type == TypeStream:
			served++
		case e.Type == TypeRefusals:
			sums = append(sums, e)
			counted += e.Count
		}
	}
	if refused != 5 || served != 2 || refused+counted != uint64(n) {
		t.Errorf("%d refusal lines, %d served, %d refusals counted in summaries; want 5, 2 and %d", refused, served, counted, n-5)
	}
	if len(sums) != maxRefusalKeys+1 {
		t.Fatalf("%d refusals lines, want %d and one for the rest", len(sums), maxRefusalKeys)
	}
	for i, e := range sums[:maxRefusalKeys] {
		want := fmt.Sprintf("svc-%02d", i)
		if e.Service != want || e.Backend != "backend:x" || e.Code != "unknown_service" || e.Count != 10 ||
			e.Request != fmt.Sprintf("ref-%05d", 5+i) || e.Relay != "relay:7443" || e.Session != "s1" || e.Since.IsZero() || e.Time.Before(e.Since) {
			t.Errorf("refusals line %d: %+v; want service %s, 10 counted, first request ref-%05d", i, e, want, 5+i)
		}
	}
	if o := sums[maxRefusalKeys]; o.Service != "" || o.Count != 10*(20-maxRefusalKeys) || o.Request != fmt.Sprintf("ref-%05d", 5+maxRefusalKeys) || o.Note == "" {
		t.Errorf("the rest: %+v; want %d refusals of the other services, first ref-%05d, with a note", o, 10*(20-maxRefusalKeys), 5+maxRefusalKeys)
	}
	if res := mustVerify(t, VerifyOptions{Path: path, Roots: ca.roots, Agent: testAgent}); !res.Intact || !res.CleanStop {
		t.Errorf("verify: %+v", res)
	}
}

// A flood of refusals while the writer is behind (here: not running yet)
// cannot fill the queue: refusals take at most half of it, the rest are
// counted, and the records of served streams queued after the flood are
// all written, none lost.
func TestRefusalFloodLeavesQueueToServedStreams(t *testing.T) {
	path := filepath.Join(t.TempDir(), "access.log")
	l := New(Options{Path: path, QueueSize: 64, Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil))})
	l.Open()
	const flood, servedN = 10000, 32
	for i := range flood {
		l.Add(refusal(i, "nosuch"))
	}
	for i := range servedN {
		l.Add(record(i))
	}
	if err := l.Err(); err != nil {
		t.Errorf("after the flood: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	l.Run(ctx) // writes what is queued and stops
	var served, refused, counted, lost uint64
	for _, e := range entries(t, path) {
		switch {
		case e.Type == TypeStream && e.End == EndRefused:
			refused++
		case e.Type == TypeStream:
			served++
		case e.Type == TypeRefusals:
			counted += e.Count
		case e.Type == TypeLost:
			lost += e.Lost
		}
	}
	if served != servedN || lost != 0 {
		t.Errorf("%d served streams written, %d records lost; want %d and none", served, lost, servedN)
	}
	if refused > 32 || refused+counted != flood {
		t.Errorf("%d refusal lines and %d refusals counted; want at most 32 lines (half the queue) and %d in all", refused, counted, flood)
	}
}

// Rotation that deletes a file of lines written less than MinRetention
// ago warns, in the writer's log and in Warning, and Changed is called.
func TestRotationTooFastWarns(t *testing.T) {
	path := filepath.Join(t.TempDir(), "access.log")
	var logged strings.Builder
	changed := make(chan struct{}, 16)
	l := startLog(t, Options{Path: path, MaxSize: 1 << 10, MaxFiles: 2, CommitDelay: -1,
		Logger:  slog.New(slog.NewTextHandler(&logged, nil)),
		Changed: func() { changed <- struct{}{} }})
	if w := l.Warning(); w != "" {
		t.Fatalf("warning before any rotation: %q", w)
	}
	for i := range 40 {
		l.Add(record(i))
	}
	l.stop()
	if w := l.Warning(); !strings.Contains(w, "rotation deleted access-log records written only") {
		t.Errorf("warning: %q", w)
	}
	if n := strings.Count(logged.String(), "rotation deleted"); n != 1 {
		t.Errorf("logged %d times, want once (then at most hourly):\n%s", n, logged.String())
	}
	select {
	case <-changed:
	default:
		t.Error("Changed was not called")
	}
	// A log that keeps its records long enough does not warn.
	quiet := startLog(t, Options{Path: filepath.Join(t.TempDir(), "access.log"), MaxSize: 1 << 10, MaxFiles: 2, CommitDelay: -1, MinRetention: time.Nanosecond})
	for i := range 40 {
		quiet.Add(record(i))
	}
	quiet.stop()
	if w := quiet.Warning(); w != "" {
		t.Errorf("warning with a retention of 1ns: %q", w)
	}
}

// Files rotated before the clock went back carry names after the new
// time (and those rotated next follow them, to keep the order): deleting
// them says nothing of how fast the log rotates, and must not warn of
// records "written only -72h ago".
func TestRotationAfterClockBackDoesNotWarn(t *testing.T) {
	path := filepath.Join(t.TempDir(), "access.log")
	ahead := func() time.Time { return time.Now().Add(72 * time.Hour) }
	before := startLog(t, Options{Path: path, MaxSize: 1 << 10, MaxFiles: 100, CommitDelay: -1, Now: ahead})
	for i := range 40 {
		before.Add(record(i))
	}
	before.stop()
	if files, err := Files(path); err != nil || len(files) < 4 {
		t.Fatalf("files before the clock went back: %v, %v; want several rotated", files, err)
	}
	var logged strings.Builder
	after := startLog(t, Options{Path: path, MaxSize: 1 << 10, MaxFiles: 2, CommitDelay: -1, Now: time.Now,
		Logger: slog.New(slog.NewTextHandler(&logged, nil))})
	for i := range 40 {
		after.Add(record(i))
	}
	after.stop()
	if files, err := Files(path); err != nil || len(files) > 3 {
		t.Fatalf("files after: %v, %v; want the rotated ones deleted down to 2", files, err)
	}
	if w := after.Warning(); w != "" {
		t.Errorf("warning after the clock went back: %q", w)
	}
	if strings.Contains(logged.String(), "rotation deleted") {
		t.Errorf("logged:\n%s", logged.String())
	}
}
