package accesslog

import (
	"crypto/tls"
	"path/filepath"
	"testing"
)

// A stream's open line and its end line pair up; Verify lists the open
// lines without an end (oldest first), saying for each whether the agent
// started again since (its end will never come), and takes end lines
// without an open line (logs written before open lines) as they are.
func TestVerifyListsUnclosedStreams(t *testing.T) {
	ca := newTestCA(t)
	cert := leaf(t, ca, testAgent)
	path := filepath.Join(t.TempDir(), "access.log")
	opened := func(i int) Record { r := record(i); r.Opened = true; return r }
	o := Options{Path: path, Certificate: func() *tls.Certificate { return cert }, Agent: testAgent}
	l := startLog(t, o)
	l.Add(record(0)) // an end without an open line, as older agents wrote
	l.Add(opened(1)) // ended below
	l.Add(opened(2)) // never ended: the agent "crashed"
	l.Add(opened(1)) // a second stream with the same request id, ended below
	l.Add(record(1))
	l.Add(record(1))
	l.Add(opened(3)) // ended
	l.Add(record(3))
	refused := record(2)
	refused.End, refused.Code = EndRefused, "not_allowed" // req-002's ids again (a relay's choice), refused: ends nothing
	l.Add(refused)
	l.stop()
	if res := mustVerify(t, VerifyOptions{Path: path, Roots: ca.roots, Agent: testAgent}); res.UnclosedCount != 1 || len(res.Unclosed) != 1 ||
		res.Unclosed[0].Request != "req-002" || res.Unclosed[0].Restarted || !res.Intact {
		t.Fatalf("verify after the first run: %+v; want req-002 unclosed, not restarted", res)
	}
	l = startLog(t, o)
	l.Add(opened(4)) // still open
	l.stop()
	res := mustVerify(t, VerifyOptions{Path: path, Roots: ca.roots, Agent: testAgent})
	if !res.Intact || res.UnclosedCount != 2 || len(res.Unclosed) != 2 {
		t.Fatalf("verify: %+v; want intact, 2 unclosed", res)
	}
	if u := res.Unclosed[0]; u.Request != "req-002" || !u.Restarted || u.File != "access.log" || u.Line != 4 || u.Service != "db" || u.Backend != "backend:billing" || u.Session != "s1" {
		t.Errorf("first unclosed: %+v; want req-002 at access.log:4, restarted since", u)
	}
	if u := res.Unclosed[1]; u.Request != "req-004" || u.Restarted {
		t.Errorf("second unclosed: %+v; want req-004, the agent not restarted since", u)
	}
	for _, e := range entries(t, path) {
		if e.Type == TypeOpen && (e.Code != "" || e.End != "" || e.Relay != "relay:7443") {
			t.Errorf("open line %+v: want no code nor end, the relay", e)
		}
	}
}
