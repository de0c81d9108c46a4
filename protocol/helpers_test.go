package protocol_test

import (
	"encoding/binary"
	"errors"
	"runtime"
	"testing"
)

// allocBytesPerRun returns the average number of heap bytes f allocates per
// call. It is used to show that a decoder refuses an announced length before
// allocating it: the announced sizes in those tests are far larger than the
// few hundred bytes an error message costs.
func allocBytesPerRun(runs int, f func()) uint64 {
	f() // warm up
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range runs {
		f()
	}
	runtime.ReadMemStats(&after)
	return (after.TotalAlloc - before.TotalAlloc) / uint64(runs)
}

// field encodes one length-prefixed field of the stream header body.
func field(s string) []byte {
	b := binary.AppendUvarint(nil, uint64(len(s)))
	return append(b, s...)
}

// concat joins byte slices.
func concat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// writeRecorder records every Write call.
type writeRecorder struct {
	writes [][]byte
	err    error
}

func (w *writeRecorder) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	w.writes = append(w.writes, append([]byte(nil), p...))
	return len(p), nil
}

var errWrite = errors.New("write failed")

// readRecorder serves data and records how many Read calls asked for bytes
// past its end, so tests can show that a decoder stopped early.
type readRecorder struct {
	data      []byte
	pastEnd   int
	biggestRq int
}

func (r *readRecorder) Read(p []byte) (int, error) {
	if len(p) > r.biggestRq {
		r.biggestRq = len(p)
	}
	if len(r.data) == 0 {
		r.pastEnd++
		return 0, errors.New("read past the end of the test input")
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

func checkCode(t *testing.T, err error, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Errorf("got error %v, want one that matches %v", err, want)
	}
}
