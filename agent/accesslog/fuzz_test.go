package accesslog

import (
	"bytes"
	"crypto/x509"
	"io"
	"os"
	"testing"
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
