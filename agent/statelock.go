package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/tetherhq/tether/agent/internal/filelock"
)

// One process per state directory. An agent (run, service) holds an
// exclusive lock on StateLockFile in its state directory from before it
// reads its identity until it exits; enroll holds it while it replaces
// the identity. Two agents on one state directory would share one
// identity, both connect as it and both write its files (the identity at
// renewal, the self-update's records, the access log): the second is
// refused at once, before it reads or writes anything there, with an
// error naming the process that holds the directory.
//
// The lock goes with the process: the system releases it when the process
// ends, however it ends, so a killed agent never leaves the directory
// locked; the file is opened close-on-exec, so a self-update's restart in
// place (exec) does not pass it to the new binary, which takes it again.
// The holder writes who it is into the file (pid, host, command, state);
// it marks itself stopping once its agent has stopped, just before it
// exits or restarts: a process that finds the directory held by one that
// is stopping (a service manager starting the agent again while the old
// process still exits; Windows may release a dead process's locks a
// little after it ends), or by a process that no longer exists, waits for
// the lock, for at most StateLockWait, rather than fail.
//
// A trial of a new binary (self-update) runs while its parent holds the
// lock, and does not take it: the parent waits for it.

// StateLockFile is the lock file in the state directory.
const StateLockFile = "agent.lock"

// StateLockWait bounds the wait for a state directory whose holder is
// stopping.
const StateLockWait = 5 * time.Second

// Holder states, as the lock file records them.
const (
	holderRunning  = "running"
	holderStopping = "stopping"
)

// unknownHolderWait is how long a record that does not parse is read
// again before it counts as an unknown holder's: one being written
// parses a moment later.
const unknownHolderWait = 200 * time.Millisecond

// maxHolderSize bounds what is read of a lock file: the holder's record
// is a line of about a hundred bytes.
const maxHolderSize = 4096

// holder is who holds a state directory's lock, as written into the lock
// file.
type holder struct {
	PID     int       `json:"pid"`
	Host    string    `json:"host,omitempty"`
	Command string    `json:"command,omitempty"` // run, service, enroll or demo (tether-relay demo's agent)
	State   string    `json:"state,omitempty"`   // running or stopping
	Since   time.Time `json:"since,omitzero"`
}

// parseHolder reads a lock file's record. The file is input like any
// other: a record that does not parse, or whose fields make no sense,
// is an unknown holder (the zero holder), never an error.
func parseHolder(b []byte) holder {
	var h holder
	if json.Unmarshal(b, &h) != nil || h.PID <= 0 || h.PID > 1<<31-1 {
		return holder{}
	}
	switch h.Command {
	case "run", "service", "enroll", "demo", "uninstall":
	default:
		h.Command = ""
	}
	switch h.State {
	case holderRunning, holderStopping:
	default:
		h.State = ""
	}
	if len(h.Host) > 255 {
		h.Host = ""
	}
	return h
}

// readHolder reads the record of the lock file at path.
func readHolder(path string) holder {
	b, err := filelock.ReadFile(path, maxHolderSize)
	if err != nil {
		return holder{}
	}
	return parseHolder(b)
}

// StateLock is this process's lock on a state directory (LockStateDir).
// Its methods do nothing on a nil StateLock.
type StateLock struct {
	f *filelock.File
	h holder
}

// StateDirBusyError is LockStateDir's error when another process holds the
// state directory.
type StateDirBusyError struct {
	Dir string
	// Command is the command that asked for the directory: run, service
	// or enroll.
	Command string
	// PID, Host, HolderCommand and Since describe the holder as its lock
	// file records it; PID is 0 when unknown, Host is empty when it is
	// this host or unknown.
	PID           int
	Host          string
	HolderCommand string
	Since         time.Time
	// Stopping says that the holder was stopping but did not let go
	// within StateLockWait; Gone, that the process its record names does
	// not exist here (it ended, or runs in another PID namespace: another
	// container on the same state directory) but the lock stayed held
	// for as long.
	Stopping bool
	Gone     bool
	Waited   time.Duration
}

func (e *StateDirBusyError) Error() string {
	var who []string
	if e.PID > 0 {
		who = append(who, "pid "+strconv.Itoa(e.PID))
	}
	if e.Host != "" {
		who = append(who, "on host "+strconv.Quote(e.Host))
	}
	switch e.HolderCommand {
	case "":
	case "demo":
		who = append(who, "the agent of tether-relay demo")
	default:
		who = append(who, "tether-agent "+e.HolderCommand)
	}
	if !e.Since.IsZero() {
		who = append(who, "since "+e.Since.UTC().Format(time.RFC3339))
	}
	switch {
	case e.Stopping:
		who = append(who, fmt.Sprintf("stopping, but still holding it after %v", e.Waited.Round(100*time.Millisecond)))
	case e.Gone:
		who = append(who, fmt.Sprintf("a process that does not exist here, perhaps one of another container or PID namespace, yet the lock is still held after %v", e.Waited.Round(100*time.Millisecond)))
	}
	holderText := "another tether-agent process"
	if len(who) > 0 {
		holderText += " (" + strings.Join(who, ", ") + ")"
	}
	lock := filepath.Join(e.Dir, StateLockFile)
	if e.Command == "uninstall" {
		return fmt.Sprintf("the state directory %s is in use by %s, which holds its lock %s: not removing the identity of an agent that is running with it. Stop that agent, then run tether-agent uninstall --purge again",
			e.Dir, holderText, lock)
	}
	if e.Command == "enroll" {
		return fmt.Sprintf("the state directory %s is in use by %s, which holds its lock %s: enrolling would replace the identity of an agent that is running with it. Stop that agent first (tether-agent stop, for the installed service), enrol, then start it again",
			e.Dir, holderText, lock)
	}
	return fmt.Sprintf("the state directory %s is in use by %s, which holds its lock %s: two agents must not share one state directory (one identity, one set of state files). Stop the other agent (tether-agent stop, for the installed service), or give this one a state_dir of its own and enrol it there with its own join token",
		e.Dir, holderText, lock)
}

// LockStateDir takes the lock of the state directory dir for this
// process, as command (run, service, enroll, or demo: the agent of
// tether-relay demo), and records this
// process in it. When another process holds it, it fails at once with a
// *StateDirBusyError, unless that process is stopping or gone: then it
// waits for the lock, for at most StateLockWait. The directory must
// exist; one that does not is ErrNotEnrolled. The lock is held until
// Release, or until the process exits or execs.
func LockStateDir(dir, command string) (*StateLock, error) {
	return lockStateDir(dir, command, StateLockWait, 50*time.Millisecond)
}

func lockStateDir(dir, command string, wait, poll time.Duration) (*StateLock, error) {
	path := filepath.Join(dir, StateLockFile)
	host, _ := os.Hostname()
	began := time.Now()
	for {
		f, err := filelock.Lock(path)
		if err == nil {
			l := &StateLock{f: f, h: holder{PID: os.Getpid(), Host: host, Command: command, State: holderRunning, Since: time.Now().UTC().Truncate(time.Second)}}
			if err := l.write(); err != nil {
				f.Unlock()
				return nil, fmt.Errorf("state directory %s: record this process in %s: %w", dir, path, err)
			}
			return l, nil
		}
		if errors.Is(err, fs.ErrNotExist) {
			if _, serr := os.Stat(dir); errors.Is(serr, fs.ErrNotExist) {
				return nil, fmt.Errorf("%w: the state directory %s does not exist (run tether-agent enroll first)", ErrNotEnrolled, dir)
			}
		}
		if !errors.Is(err, filelock.ErrLocked) {
			return nil, fmt.Errorf("lock the state directory %s: %w", dir, err)
		}
		h := readHolder(path)
		otherHost := h.Host != "" && h.Host != host
		stopping := h.State == holderStopping
		gone := !stopping && h.PID > 0 && !otherHost && processGone(h.PID)
		// A record that does not parse may be one being written (the
		// holder has just taken the lock, or is marking itself
		// stopping): it is read again for a moment before it counts as
		// an unknown holder's.
		unread := h.PID == 0 && time.Since(began) < unknownHolderWait
		waited := time.Since(began)
		if !(stopping || gone || unread) || waited >= wait {
			e := &StateDirBusyError{Dir: dir, Command: command, PID: h.PID, HolderCommand: h.Command, Since: h.Since, Stopping: stopping, Gone: gone, Waited: waited}
			if otherHost {
				e.Host = h.Host
			}
			return nil, e
		}
		time.Sleep(poll)
	}
}

// write records l's holder in the lock file: over the record there, then
// cut to its length, so that the file is never empty in between (a
// record rewritten as stopping is longer than the running one it
// replaces).
func (l *StateLock) write() error {
	b, _ := json.Marshal(l.h)
	b = append(b, '\n')
	f := l.f.File()
	if _, err := f.WriteAt(b, 0); err != nil {
		return err
	}
	return f.Truncate(int64(len(b)))
}

// Stopping records that this process is stopping (its agent has stopped;
// it is about to exit or restart), so that a process started meanwhile
// waits for the lock rather than fail.
func (l *StateLock) Stopping() {
	if l == nil || l.f == nil {
		return
	}
	l.h.State = holderStopping
	l.write()
}

// Release lets go of the lock (an exit or exec does too).
func (l *StateLock) Release() {
	if l == nil || l.f == nil {
		return
	}
	l.f.Unlock()
	l.f = nil
}
