package accesslog

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// rotatedLayout is the time in a rotated file's name: when it was rotated,
// UTC, to the nanosecond, so that names sort in the order of the chain.
const rotatedLayout = "20060102T150405.000000000Z"

// rotatedName is the name a file at path gets when it is rotated at t:
// access.log becomes access-20260102T150405.123456789Z.log beside it.
func rotatedName(path string, t time.Time) string {
	dir, stem, ext := splitPath(path)
	return filepath.Join(dir, stem+"-"+t.UTC().Format(rotatedLayout)+ext)
}

func splitPath(path string) (dir, stem, ext string) {
	dir, base := filepath.Split(path)
	ext = filepath.Ext(base)
	return dir, strings.TrimSuffix(base, ext), ext
}

// rotatedTime reports whether name (a base name) is one of path's rotated
// files, and when it was rotated.
func rotatedTime(path, name string) (time.Time, bool) {
	_, stem, ext := splitPath(path)
	mid, ok := strings.CutPrefix(name, stem+"-")
	if !ok {
		return time.Time{}, false
	}
	if mid, ok = strings.CutSuffix(mid, ext); !ok || len(mid) != len(rotatedLayout) {
		return time.Time{}, false
	}
	t, err := time.Parse(rotatedLayout, mid)
	return t, err == nil
}

// Files lists the files of the log whose current file is path, oldest
// first: the rotated files in the order they were rotated, then path
// itself when it exists. Files of other names in the directory are left
// out.
func Files(path string) ([]string, error) {
	dir := filepath.Dir(path)
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("list access log files: %w", err)
	}
	type rotated struct {
		name string
		at   time.Time
	}
	var rs []rotated
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		if at, ok := rotatedTime(path, e.Name()); ok {
			rs = append(rs, rotated{e.Name(), at})
		}
	}
	slices.SortFunc(rs, func(a, b rotated) int {
		if c := a.at.Compare(b.at); c != 0 {
			return c
		}
		return strings.Compare(a.name, b.name)
	})
	out := make([]string, 0, len(rs)+1)
	for _, r := range rs {
		out = append(out, filepath.Join(dir, r.name))
	}
	if fi, err := os.Lstat(path); err == nil && fi.Mode().IsRegular() {
		out = append(out, path)
	}
	return out, nil
}

// lineReader reads lines of at most MaxLine bytes.
type lineReader struct {
	br  *bufio.Reader
	buf []byte
}

func newLineReader(r io.Reader) *lineReader {
	return &lineReader{br: bufio.NewReaderSize(r, 64<<10)}
}

// next returns the next line without its newline. complete is false for a
// last line that has no newline; tooLong is true for a line longer than
// MaxLine, which is skipped (line is then nil). At the end it returns
// io.EOF.
func (lr *lineReader) next() (line []byte, complete, tooLong bool, err error) {
	lr.buf = lr.buf[:0]
	for {
		chunk, err := lr.br.ReadSlice('\n')
		if !tooLong {
			if len(lr.buf)+len(chunk) > MaxLine+1 {
				tooLong = true
				lr.buf = lr.buf[:0]
			} else {
				lr.buf = append(lr.buf, chunk...)
			}
		}
		switch {
		case err == nil:
			if tooLong {
				return nil, true, true, nil
			}
			return lr.buf[:len(lr.buf)-1], true, false, nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF):
			if tooLong {
				return nil, false, true, nil
			}
			if len(lr.buf) == 0 {
				return nil, false, false, io.EOF
			}
			return lr.buf, false, false, nil
		default:
			return nil, false, false, err
		}
	}
}

// tail is what the end of a log file says about the chain.
type tail struct {
	head     string // hash of the last complete line (Genesis when there is none)
	seq      uint64 // its seq (0 when it does not parse or there is none)
	partial  int64  // bytes after the last newline: an incomplete last line
	size     int64  // the file's size
	tooLong  bool   // the last line (complete or not) is longer than MaxLine
	badLast  bool   // the last complete line does not parse
	hasLines bool   // the file holds at least one complete line
	stopped  bool   // the last complete line is the checkpoint of a clean stop
}

// readTail reads the end of f (at most two lines' bound) to find the last
// complete line.
func readTail(f *os.File) (tail, error) {
	fi, err := f.Stat()
	if err != nil {
		return tail{}, err
	}
	t := tail{head: Genesis, size: fi.Size()}
	if t.size == 0 {
		return t, nil
	}
	n := min(t.size, 2*(MaxLine+1))
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, t.size-n); err != nil && !errors.Is(err, io.EOF) {
		return tail{}, err
	}
	whole := n == t.size // buf starts at the file's start
	last := bytes.LastIndexByte(buf, '\n')
	if last < 0 {
		// No newline at all: one incomplete line.
		if !whole || n > MaxLine {
			t.tooLong = true
			return t, nil
		}
		t.partial = n
		return t, nil
	}
	t.partial = n - int64(last) - 1
	if t.partial > MaxLine {
		t.tooLong = true
		return t, nil
	}
	buf = buf[:last]
	start := bytes.LastIndexByte(buf, '\n') + 1
	if start == 0 && !whole {
		t.tooLong = true
		return t, nil
	}
	line := buf[start:]
	if len(line) > MaxLine {
		t.tooLong = true
		return t, nil
	}
	t.hasLines = true
	t.head = hashLine(line)
	if e, err := ParseLine(line); err == nil {
		t.seq = e.Seq
		t.stopped = e.Type == TypeCheckpoint && e.Why == WhyStop
	} else {
		t.badLast = true
	}
	return t, nil
}
