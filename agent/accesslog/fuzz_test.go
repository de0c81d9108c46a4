package accesslog

import (
	"bytes"
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
// checkpoint) written in a temporary directory.
func seedLines(f *testing.F) [][]byte {
	ca := newTestCA(f)
	path := writeLog(f, leaf(f, ca, testAgent), 2)
	b, err := os.ReadFile(path)
	if err != nil {
		f.Fatal(err)
	}
	return bytes.Split(bytes.TrimSuffix(b, []byte("\n")), []byte("\n"))
}

// FuzzParseLine: whatever a line holds, parsing it and checking it as a
// checkpoint return an error or a bounded entry, never a panic.
func FuzzParseLine(f *testing.F) {
	for _, l := range seedLines(f) {
		f.Add(l)
	}
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
		if e.Seq == 0 || !isHash(e.Prev) || len(e.Message) > maxField {
			t.Fatalf("ParseLine accepted %q as %+v", b, e)
		}
		if e.Type == TypeCheckpoint {
			checkCheckpoint(&e, VerifyOptions{Roots: roots, Agent: testAgent})
			checkCheckpoint(&e, VerifyOptions{})
		}
	})
}

// FuzzVerify: whatever two files of a log hold, Verify returns a result
// (intact or with a problem at a line that exists), never a panic.
func FuzzVerify(f *testing.F) {
	lines := seedLines(f)
	all := append(bytes.Join(lines, []byte("\n")), '\n')
	f.Add(all, []byte{})
	f.Add(all[:len(all)/2], all[len(all)/2:])
	f.Add(append(bytes.Join(lines[:2], []byte("\n")), '\n'), append(bytes.Join(lines[3:], []byte("\n")), '\n'))
	f.Add([]byte("\n\n\n"), []byte("{"))
	f.Fuzz(func(t *testing.T, a, b []byte) {
		files := [][]byte{a, b}
		open := func(i int) (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(files[i])), nil }
		res, err := verify([]string{"access-1.log", "access.log"}, open, VerifyOptions{Agent: testAgent})
		if err != nil {
			t.Fatal(err)
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
	f.Fuzz(func(t *testing.T, request, backend, service, code, end, relay, session, message string, unix int64, opened bool) {
		path := filepath.Join(t.TempDir(), "access.log")
		l := startLog(t, Options{Path: path, CommitDelay: -1, Certificate: func() *tls.Certificate { return cert }, Agent: testAgent, Version: session, Logger: slog.New(slog.DiscardHandler)})
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
		res := mustVerify(t, VerifyOptions{Path: path, Roots: ca.roots, Agent: testAgent})
		if !res.Intact || res.Verified != 1 || !res.CleanStop {
			t.Fatalf("verify: %+v, want intact with its checkpoint verified", res)
		}
	})
}
