package accesslog

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// The mark is a small file outside the log's directory (the agent keeps
// it in its state directory) where the writer records how far the chain
// had reached at its last checkpoint, and at each start: "seq <n> head
// <hash>\n", with " stop" before the newline when that checkpoint is the
// one of a clean stop. The chain itself cannot show that lines were
// removed from its end back to an earlier checkpoint (a whole run of the
// agent, say): what is left is a shorter chain that verifies. Nor can it
// tell lines appended after a clean stop, chained by someone without the
// log key, from lines the agent wrote and had not signed yet; the next
// start would continue the chain from them and its checkpoints would
// cover them. The mark can. A start whose log ends before it, or goes on
// after a clean stop without a checkpoint of its own, says so in its
// start line, and Verify given it reports the lines as removed or
// inserted.

// mark is what a mark file holds.
type mark struct {
	seq  uint64
	head string
	stop bool // the line at seq is the checkpoint of a clean stop
}

// readMark reads the mark at path; ok is false when there is none.
func readMark(path string) (m mark, ok bool, err error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return mark{}, false, nil
	}
	if err != nil {
		return mark{}, false, err
	}
	f := strings.Fields(string(b))
	if len(f) < 4 || len(f) > 5 || f[0] != "seq" || f[2] != "head" || !isHash(f[3]) || len(f) == 5 && f[4] != "stop" {
		return mark{}, false, fmt.Errorf("%s: not an access log mark (want \"seq N head HASH\", optionally followed by \"stop\")", path)
	}
	seq, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		return mark{}, false, fmt.Errorf("%s: not an access log mark: seq %q", path, f[1])
	}
	return mark{seq: seq, head: f[3], stop: len(f) == 5}, true, nil
}

// writeMark replaces the mark at path, durably (replaceFile).
func writeMark(path string, m mark) error {
	stop := ""
	if m.stop {
		stop = " stop"
	}
	return replaceFile(path, fmt.Appendf(nil, "seq %d head %s%s\n", m.seq, m.head, stop))
}

// replaceFile replaces the file at path with data, durably: a new file
// (path.new, 0600) synced, renamed over the old one, and the directory
// synced.
func replaceFile(path string, data []byte) error {
	tmp := path + ".new"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	syncDir(filepath.Dir(path))
	return nil
}

// removedFromEnd says how lines were removed from the end of a log
// whose last line has seq last, given the mark m read from path.
func removedFromEnd(last uint64, m mark, path string) string {
	return fmt.Sprintf(notedRemoved+"%d, but the agent had written a checkpoint at seq %d (recorded in %s): the lines after seq %d were removed", last, m.seq, path, last)
}

// How the notes of removedFromEnd and addedAfterStop begin: a start
// line whose note holds one records that the log was altered before
// that start (Result.Altered).
const (
	notedRemoved = "the log ends at seq "
	notedAdded   = "the agent stopped cleanly at seq "
)

// addedAfterStop says how lines were added after the clean stop m
// records, up to seq last.
func addedAfterStop(last uint64, m mark, path string) string {
	return fmt.Sprintf(notedAdded+"%d (recorded in %s), but the log goes on to seq %d with no checkpoint after it: the lines after seq %d were added by someone other than the agent (or by an earlier version of it, which keeps no mark, run since and killed)", m.seq, path, last, m.seq)
}
