package accesslog

import (
	"bytes"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// seedLines are lines of a real log (a start line, streams, a signed
// checkpoint) written in a temporary directory: with a log key (a key
// line, a checkpoint signed with the key) when key is set, else as
// earlier versions wrote them (a checkpoint signed with a certificate).
func seedLines(f *testing.F, key ed25519.PrivateKey) [][]byte {
	ca := newTestCA(f)
	path := ""
	if key != nil {
		path = writeKeyedLog(f, key, nil, Options{}, 2)
	} else {
		path = writeLog(f, leaf(f, ca, testAgent), 2)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		f.Fatal(err)
	}
	return bytes.Split(bytes.TrimSuffix(b, []byte("\n")), []byte("\n"))
}

// FuzzParseLine: whatever a line holds, parsing it and checking it as a
// checkpoint or a key line return an error or a bounded entry, never a
// panic.
func FuzzParseLine(f *testing.F) {
	key := newLogKey(f)
	for _, l := range append(seedLines(f, nil), seedLines(f, key)...) {
		f.Add(l)
	}
	f.Add([]byte(`{"seq":2,"time":"2026-01-01T00:00:00Z","type":"key","prev":"` + Genesis + `","key":"AAAA","sig":"AAAA"}`))
	f.Add([]byte(`{"seq":2,"time":"2026-01-01T00:00:00Z","type":"checkpoint","prev":"` + Genesis + `","lines":1,"key":"AAAA","cert":"AAAA","sig":"AAAA"}`))
	f.Add([]byte(`{"seq":1,"time":"2026-01-01T00:00:00Z","type":"checkpoint","prev":"` + Genesis + `","lines":0,"cert":"AAAA","sig":"AAAA"}`))
	f.Add([]byte(`{"seq":18446744073709551615,"prev":"` + Genesis + `"}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`[`))
	roots := x509.NewCertPool()
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := ParseLine(b)
		if err != nil {
			return
		}
		if e.Seq == 0 || !isHash(e.Prev) || len(e.Message) > maxField || len(e.Key) > maxKey || len(e.Sig) > maxSig || len(e.Cert) > maxCert {
			t.Fatalf("ParseLine accepted %q as %+v", b, e)
		}
		if e.Type == TypeKey && (e.Key == "" || e.Sig == "") {
			t.Fatalf("ParseLine accepted a key line without a key or signature: %q", b)
		}
		v := &vline{file: "access.log", n: 1, complete: true, e: e}
		for _, o := range []VerifyOptions{{Roots: roots, Agent: testAgent}, {}} {
			(&keyChain{}).line(v, o)
			(&keyChain{pinned: fingerprintOf(key)}).line(v, o)
			kc := &keyChain{cur: key.Public().(ed25519.PublicKey), curAt: "access.log:1"}
			kc.line(v, o)
		}
	})
}

// FuzzVerify: whatever two files of a log hold, Verify returns a result
// (intact or with a problem at a line that exists), never a panic.
func FuzzVerify(f *testing.F) {
	key := newLogKey(f)
	for _, lines := range [][][]byte{seedLines(f, nil), seedLines(f, key)} {
		all := append(bytes.Join(lines, []byte("\n")), '\n')
		f.Add(all, []byte{}, false)
		f.Add(all[:len(all)/2], all[len(all)/2:], true)
		f.Add(append(bytes.Join(lines[:2], []byte("\n")), '\n'), append(bytes.Join(lines[3:], []byte("\n")), '\n'), true)
	}
	f.Add([]byte("\n\n\n"), []byte("{"), false)
	f.Fuzz(func(t *testing.T, a, b []byte, pinned bool) {
		files := [][]byte{a, b}
		open := func(i int) (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(files[i])), nil }
		o := VerifyOptions{Agent: testAgent}
		if pinned {
			o.Key = fingerprintOf(key)
		}
		res, err := verify([]string{"access-1.log", "access.log"}, open, o, nil, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if res.Intact && pinned && res.Lines > 0 && res.FirstKey != o.Key {
			t.Fatalf("result %+v: intact, pinned to %s, from another first key", res, o.Key)
		}
		if res.Intact != (res.Problem == nil) {
			t.Fatalf("result %+v: intact and problem disagree", res)
		}
		if p := res.Problem; p != nil {
			n := bytes.Count(files[0], []byte("\n")) + 1
			if p.File == "access.log" {
				n = bytes.Count(files[1], []byte("\n")) + 1
			}
			if p.Line < 1 || p.Line > n {
				t.Fatalf("problem at line %d of %s, which has %d lines", p.Line, p.File, n)
			}
		}
	})
}

// FuzzWriteRead: whatever a record holds (the relay chooses the request
// id, the backend, the service and the session id), the writer writes a
// line that the reader takes, with the record's fields as far as the
// bounds let them through, and the log verifies.
func FuzzWriteRead(f *testing.F) {
	f.Add("req-1", "backend:billing", "db", "ok", "closed", "relay:7443", "0123456789abcdef", "", int64(0), false)
	f.Add(strings.Repeat("<", 3000), strings.Repeat("\x01", 5000), "\xff\xfe", "x\ny", "\x1b[8m", strings.Repeat("é", 700), strings.Repeat("\x00", 70000), strings.Repeat("\"", 2000), int64(-1), true)
	f.Add(strings.Repeat("\xff", 2000), "", "", "", "", "", "", strings.Repeat("\u2028", 400), int64(1)<<62, false)
	f.Add(strings.Repeat("\x01", 5000), strings.Repeat("\x01", 5000), strings.Repeat("\x01", 5000), "", "", strings.Repeat("\x01", 5000), strings.Repeat("\x01", 5000), "", int64(5), true)
	ca := newTestCA(f)
	cert := leaf(f, ca, testAgent)
	key := newLogKey(f)
	f.Fuzz(func(t *testing.T, request, backend, service, code, end, relay, session, message string, unix int64, opened bool) {
		path := filepath.Join(t.TempDir(), "access.log")
		o := Options{Path: path, CommitDelay: -1, Certificate: func() *tls.Certificate { return cert }, Agent: testAgent, Version: session, Logger: slog.New(slog.DiscardHandler)}
		if !opened {
			o.Key = key // a log key for stream lines, the certificate (as earlier versions) for open lines
		}
		l := startLog(t, o)
		r := Record{Time: time.Unix(unix, 0), Request: request, Backend: backend, Service: service, Code: code, End: end, Relay: relay, Session: session, Message: message, Duration: time.Duration(unix), Opened: opened}
		l.Add(r)
		l.stop()
		if err := l.Err(); err != nil {
			t.Fatalf("the writer failed: %v", err)
		}
		var got []Entry
		err := Read(path, func(file string, n int, e Entry, raw []byte, err error) error {
			if err != nil {
				t.Fatalf("%s:%d (%d bytes): the reader refuses a line the writer wrote: %v", file, n, len(raw), err)
			}
			if e.Type == TypeStream || e.Type == TypeOpen || e.Type == TypeRefusals {
				got = append(got, e)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 {
			t.Fatalf("%d lines of the record, want 1", len(got))
		}
		e := got[0]
		fields := []struct{ name, in, out string }{
			{"request", request, e.Request}, {"backend", backend, e.Backend}, {"service", service, e.Service},
			{"relay", relay, e.Relay}, {"session", session, e.Session},
		}
		if e.Type == TypeStream {
			fields = append(fields, []struct{ name, in, out string }{{"code", code, e.Code}, {"end", end, e.End}, {"message", message, e.Message}}...)
		}
		for _, c := range fields {
			if utf8.ValidString(c.in) && !strings.HasPrefix(c.in, c.out) {
				t.Errorf("%s: wrote %.60q, read back %.60q: not a prefix", c.name, c.in, c.out)
			}
			if utf8.ValidString(c.in) && len(c.in) <= maxMessage && c.out != c.in {
				t.Errorf("%s: wrote %q, read back %q", c.name, c.in, c.out)
			}
		}
		vo := VerifyOptions{Path: path, Roots: ca.roots, Agent: testAgent}
		if o.Key != nil {
			vo.Key = fingerprintOf(key)
		}
		res := mustVerify(t, vo)
		if !res.Intact || res.Verified != 1 || !res.CleanStop || (o.Key != nil) != (res.KeyLines == 1) {
			t.Fatalf("verify: %+v, want intact with its checkpoint verified (and its key line, with a key)", res)
		}
	})
}

// FuzzParseStopLosses: whatever the record of stops that lost records
// holds (a file in the state directory anyone with access may edit),
// parsing it returns an error or bounded stops, never a panic; what it
// takes, written again, reads back the same, and as the same bytes.
func FuzzParseStopLosses(f *testing.F) {
	t0 := time.Date(2026, 12, 7, 16, 33, 20, 123456789, time.UTC)
	f.Add(formatStopLosses([]stopLoss{{time: t0, lost: 12, at: true, seq: 41, head: Genesis, err: "write: no space left on device"}}))
	f.Add(formatStopLosses([]stopLoss{{time: t0, lost: 1, err: "open: mkdir /var/lib/tether/access-log: not a directory"},
		{time: t0.Add(time.Hour), lost: 18446744073709551615, at: true, seq: 7, head: Genesis, err: "\x00\"\\\n\u2028é"}}))
	f.Add([]byte(stopLossHeader + "\nstop 2026-12-07T16:33:20Z lost 01 error \"x\"\n"))
	f.Add([]byte(stopLossHeader + "\nstop 2026-12-07T16:33:20+01:00 lost 1 error \"x\" \"y\"\n"))
	f.Add([]byte(stopLossHeader + "\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, b []byte) {
		stops, err := parseStopLosses(b)
		if err != nil {
			return
		}
		if len(stops) == 0 || len(stops) > maxStops {
			t.Fatalf("parsed %d stops from %q", len(stops), b)
		}
		for _, s := range stops {
			if s.lost == 0 || len(s.err) > maxStopError || !utf8.ValidString(s.err) || s.at && !isHash(s.head) || !s.at && (s.seq != 0 || s.head != "") ||
				s.time.Location() != time.UTC {
				t.Fatalf("parsed %+v from %q", s, b)
			}
		}
		again := formatStopLosses(stops)
		if !bytes.Equal(again, b) {
			t.Fatalf("parsed %q, written again as %q", b, again)
		}
	})
}
