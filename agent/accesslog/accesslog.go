// Package accesslog keeps the agent's access log: the tenant's own record,
// on the tenant's machine, of every stream the agent served or refused.
//
// The log is a file of JSON lines. Every line names the SHA-256 of the line
// before it ("prev"), so the lines form a hash chain that continues across
// rotated files; every line also carries a sequence number ("seq") that
// grows by one from line to line. Now and then (every minute while lines
// are written, when a file is rotated and when the agent stops) the agent
// appends a checkpoint: the chain head (the hash of the line before it),
// the number of lines before it and the time, signed with the agent's own
// key, with the certificate that verifies the signature. Verify walks the
// chain and reports the first line that was altered, removed, inserted or
// reordered; a checkpoint's signature shows that nobody without the agent's
// key rewrote the lines it covers.
//
// Lines are written by one goroutine (Log.Run) that commits them in
// batches, one write and one fsync per batch; the stream path only queues
// a Record (Log.Add), which never blocks.
package accesslog

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Line types.
const (
	TypeStream     = "stream"     // a stream the agent served or refused, when it ended
	TypeOpen       = "open"       // a stream the agent accepted, when it did: its stream line follows when it ends
	TypeCheckpoint = "checkpoint" // a signed chain head
	TypeStart      = "start"      // the agent started writing the log
	TypeLost       = "lost"       // records that could not be written
	TypeRefusals   = "refusals"   // refused streams beyond the budget of lines, counted
	TypeKey        = "key"        // the log key that signs the checkpoints after it, signed by the key in force before it
)

// How a stream ended (Record.End).
const (
	EndClosed  = "closed"       // both sides finished cleanly
	EndIdle    = "idle_timeout" // nothing moved for the idle timeout
	EndReset   = "reset"        // the service or the backend's side reset it
	EndCut     = "cut"          // the session to the relay ended under it (agent stopping, relay lost)
	EndError   = "error"        // another failure while copying
	EndRefused = "refused"      // the agent refused it (Record.Code says why)
)

// Why a checkpoint was written (Entry.Why).
const (
	WhyInterval = "interval" // lines were written since the last one
	WhyRotate   = "rotate"   // the last line of a file before rotation
	WhyStop     = "stop"     // the agent stopped cleanly
)

// MaxLine bounds the length of a line the reader accepts. The writer's
// lines are far shorter (a checkpoint, the longest, is about 1.5 KiB).
const MaxLine = 64 << 10

var _ = [MaxLine - maxStreamLine]struct{}{} // a compile-time check: maxStreamLine <= MaxLine

// Genesis is the hash the first line of a new chain follows.
var Genesis = strings.Repeat("0", sha256.Size*2)

// Bounds on what a line may hold, checked by the reader.
const (
	maxCert     = 8 << 10 // base64 of a DER certificate
	maxSig      = 512     // base64 of an ASN.1 ECDSA signature (an ed25519 one is 88)
	maxKey      = 64      // base64 of an ed25519 public key (44)
	maxMessage  = 512     // a refusal's message, as the writer clips it
	maxField    = 1024    // any other string
	checkpointV = "tether-agent access log checkpoint v1"
)

// Record is one stream the agent served or refused, as the agent hands
// it to Add.
type Record struct {
	Time             time.Time     // when the stream ended or was refused
	Request          string        // the relay's request id (StreamHeader.RequestID)
	Backend          string        // the backend identity the relay asserted (StreamHeader.Backend)
	Service          string        // the service asked for
	Code             string        // the outcome's code (protocol.Code name: ok, unknown_service, …)
	End              string        // how the stream ended (End…)
	BytesToService   int64         // backend to service
	BytesFromService int64         // service to backend
	Duration         time.Duration // from the stream's header to its end
	Relay            string        // the relay the stream came through
	Session          string        // the relay's id of the session
	Message          string        // a refusal's message
	// Opened makes the record an open line: the stream was accepted at
	// Time (Duration after its header), and a record of its end follows.
	// Only Request, Backend, Service, Relay and Session are kept.
	Opened bool
}

// Entry is one line of the log as read back: the fields of every type of
// line, each set for the types that have it.
type Entry struct {
	Seq  uint64    `json:"seq"`
	Time time.Time `json:"time"`
	Type string    `json:"type"`
	Prev string    `json:"prev"`

	// stream
	Request          string `json:"request,omitempty"`
	Backend          string `json:"backend,omitempty"`
	Service          string `json:"service,omitempty"`
	Code             string `json:"code,omitempty"`
	End              string `json:"end,omitempty"`
	BytesToService   int64  `json:"bytes_to_service,omitempty"`
	BytesFromService int64  `json:"bytes_from_service,omitempty"`
	DurationMicros   int64  `json:"duration_us,omitempty"`
	Relay            string `json:"relay,omitempty"`
	Session          string `json:"session,omitempty"`
	Message          string `json:"message,omitempty"`

	// checkpoint (Key and Sig: also key)
	Why   string `json:"why,omitempty"`
	Lines uint64 `json:"lines,omitempty"`
	Cert  string `json:"cert,omitempty"` // the agent's certificate, in checkpoints of earlier versions
	Key   string `json:"key,omitempty"`  // the log key (base64 of the ed25519 public key)
	Sig   string `json:"sig,omitempty"`

	// start
	Agent    string `json:"agent,omitempty"`
	Version  string `json:"version,omitempty"`
	Repaired int64  `json:"repaired_bytes,omitempty"`
	Note     string `json:"note,omitempty"`

	// lost
	Lost    uint64    `json:"lost,omitempty"`
	Stopped time.Time `json:"stopped,omitzero"` // the stop at which they were lost (a start writes it from Options.StopLosses)

	// refusals (with request, backend, service, code, relay, session and
	// time from the stream's fields: the first refusal's request, relay
	// and session, the last one's time)
	Since time.Time `json:"since,omitzero"` // the first refusal counted
	Count uint64    `json:"count,omitempty"`
}

// Duration is how long a stream lasted.
func (e *Entry) Duration() time.Duration { return time.Duration(e.DurationMicros) * time.Microsecond }

// The lines as written: one struct per type, so each has exactly its own
// fields (a stream's zero byte counts included). prev comes last.
type streamLine struct {
	Seq              uint64    `json:"seq"`
	Time             time.Time `json:"time"`
	Type             string    `json:"type"`
	Request          string    `json:"request"`
	Backend          string    `json:"backend"`
	Service          string    `json:"service"`
	Code             string    `json:"code"`
	End              string    `json:"end"`
	BytesToService   int64     `json:"bytes_to_service"`
	BytesFromService int64     `json:"bytes_from_service"`
	DurationMicros   int64     `json:"duration_us"`
	Relay            string    `json:"relay,omitempty"`
	Session          string    `json:"session,omitempty"`
	Message          string    `json:"message,omitempty"`
	Prev             string    `json:"prev"`
}

type openLine struct {
	Seq            uint64    `json:"seq"`
	Time           time.Time `json:"time"`
	Type           string    `json:"type"`
	Request        string    `json:"request"`
	Backend        string    `json:"backend"`
	Service        string    `json:"service"`
	DurationMicros int64     `json:"duration_us"`
	Relay          string    `json:"relay,omitempty"`
	Session        string    `json:"session,omitempty"`
	Prev           string    `json:"prev"`
}

type checkpointLine struct {
	Seq   uint64    `json:"seq"`
	Time  time.Time `json:"time"`
	Type  string    `json:"type"`
	Why   string    `json:"why"`
	Lines uint64    `json:"lines"`
	Cert  string    `json:"cert"`
	Sig   string    `json:"sig"`
	Prev  string    `json:"prev"`
}

// keyedCheckpointLine is a checkpoint signed with the log key.
type keyedCheckpointLine struct {
	Seq   uint64    `json:"seq"`
	Time  time.Time `json:"time"`
	Type  string    `json:"type"`
	Why   string    `json:"why"`
	Lines uint64    `json:"lines"`
	Key   string    `json:"key"`
	Sig   string    `json:"sig"`
	Prev  string    `json:"prev"`
}

// keyLine names the log key that signs the checkpoints after it; Sig is
// the signature of the key in force before it (of the key itself at the
// start of the chain) over keyMessage.
type keyLine struct {
	Seq  uint64    `json:"seq"`
	Time time.Time `json:"time"`
	Type string    `json:"type"`
	Key  string    `json:"key"`
	Sig  string    `json:"sig"`
	Prev string    `json:"prev"`
}

type startLine struct {
	Seq      uint64    `json:"seq"`
	Time     time.Time `json:"time"`
	Type     string    `json:"type"`
	Agent    string    `json:"agent,omitempty"`
	Version  string    `json:"version,omitempty"`
	Repaired int64     `json:"repaired_bytes,omitempty"`
	Note     string    `json:"note,omitempty"`
	Prev     string    `json:"prev"`
}

type lostLine struct {
	Seq     uint64    `json:"seq"`
	Time    time.Time `json:"time"`
	Type    string    `json:"type"`
	Lost    uint64    `json:"lost"`
	Stopped time.Time `json:"stopped,omitzero"`
	Note    string    `json:"note"`
	Prev    string    `json:"prev"`
}

type refusalsLine struct {
	Seq     uint64    `json:"seq"`
	Time    time.Time `json:"time"`
	Type    string    `json:"type"`
	Since   time.Time `json:"since"`
	Service string    `json:"service"`
	Backend string    `json:"backend"`
	Code    string    `json:"code"`
	Count   uint64    `json:"count"`
	Request string    `json:"request"`
	Relay   string    `json:"relay,omitempty"`
	Session string    `json:"session,omitempty"`
	Note    string    `json:"note,omitempty"`
	Prev    string    `json:"prev"`
}

// lineOf is a line the writer encodes: set gives it its seq and prev.
type lineOf interface{ set(seq uint64, prev string) }

func (v *streamLine) set(seq uint64, prev string) { v.Seq, v.Prev = seq, prev }
func (v *openLine) set(seq uint64, prev string)   { v.Seq, v.Prev = seq, prev }

// hashLine is the hex SHA-256 of a line without its newline: what the
// next line names as prev.
func hashLine(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// checkpointMessage is what a checkpoint's signature covers: the chain
// head, the number of lines before the checkpoint and its time.
func checkpointMessage(head string, lines uint64, t time.Time) []byte {
	return fmt.Appendf(nil, "%s\nhead %s\nlines %d\ntime %s\n", checkpointV, head, lines, t.UTC().Format(time.RFC3339Nano))
}

// ParseLine decodes one line (without its newline) and checks its shape:
// a known sequence number, a well-formed prev hash and bounded fields.
// The line comes from a file anyone with access to the machine may have
// edited: every field is checked, nothing is trusted.
func ParseLine(b []byte) (Entry, error) {
	var e Entry
	if len(b) > MaxLine {
		return e, fmt.Errorf("line longer than %d bytes", MaxLine)
	}
	if len(b) == 0 || b[0] != '{' {
		return e, errors.New("not a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&e); err != nil {
		return Entry{}, fmt.Errorf("not an access-log line: %w", err)
	}
	if dec.More() {
		return Entry{}, errors.New("not an access-log line: data after the JSON object")
	}
	if e.Seq == 0 {
		return Entry{}, errors.New("no seq")
	}
	if !isHash(e.Prev) {
		return Entry{}, errors.New("prev is not a hex SHA-256")
	}
	if e.Type == "" || len(e.Type) > 32 {
		return Entry{}, errors.New("no type")
	}
	if e.Time.IsZero() {
		return Entry{}, errors.New("no time")
	}
	for _, s := range []string{e.Request, e.Backend, e.Service, e.Code, e.End, e.Relay, e.Session, e.Why, e.Agent, e.Version, e.Note} {
		if len(s) > maxField {
			return Entry{}, fmt.Errorf("a field is longer than %d bytes", maxField)
		}
	}
	if len(e.Message) > maxField {
		return Entry{}, fmt.Errorf("message longer than %d bytes", maxField)
	}
	if len(e.Key) > maxKey {
		return Entry{}, fmt.Errorf("key longer than %d bytes", maxKey)
	}
	if len(e.Cert) > maxCert || len(e.Sig) > maxSig {
		return Entry{}, fmt.Errorf("certificate longer than %d bytes or signature longer than %d", maxCert, maxSig)
	}
	switch e.Type {
	case TypeCheckpoint:
		switch {
		case e.Cert != "" && e.Key != "":
			return Entry{}, errors.New("checkpoint with both a certificate and a log key")
		case e.Key == "" && (len(e.Cert) == 0 || len(e.Cert) > maxCert):
			return Entry{}, fmt.Errorf("checkpoint certificate missing or longer than %d bytes", maxCert)
		}
		if len(e.Sig) == 0 || len(e.Sig) > maxSig {
			return Entry{}, fmt.Errorf("checkpoint signature missing or longer than %d bytes", maxSig)
		}
	case TypeKey:
		if e.Key == "" {
			return Entry{}, errors.New("key line without a key")
		}
		if len(e.Sig) == 0 || len(e.Sig) > maxSig {
			return Entry{}, fmt.Errorf("key line signature missing or longer than %d bytes", maxSig)
		}
		if e.Cert != "" {
			return Entry{}, errors.New("key line with a certificate")
		}
	}
	return e, nil
}

func isHash(s string) bool { return len(s) == sha256.Size*2 && isHex(s) }

// clip shortens s to at most n bytes of valid UTF-8.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "")
}

// field is s as the writer puts it in a line: valid UTF-8 (each run of
// invalid bytes replaced with U+FFFD, as encoding/json would, but before
// clipping, so that the replacement cannot lengthen it) of at most n
// bytes, n being at most what ParseLine takes.
func field(s string, n int) string {
	return clip(strings.ToValidUTF8(s, "\uFFFD"), n)
}

// maxStreamLine bounds the length of a stream line as the writer encodes
// it: every string field clipped to maxField bytes (the message to
// maxMessage), each byte at most six in JSON (a control character is
// \u00XX), the numbers and the time at their longest, the names and
// punctuation. It is below MaxLine, so the reader takes every line the
// writer writes, whatever the relay put in a stream's header or Welcome.
const maxStreamLine = (7*maxField+maxMessage)*6 + 1024

// lineTime is t as a line holds it: UTC, or now when t is zero or cannot
// be written in RFC 3339 (a year outside 0 to 9999).
func lineTime(t, now time.Time) time.Time {
	if u := t.UTC(); !t.IsZero() && u.Year() >= 0 && u.Year() <= 9999 {
		return u
	}
	return now
}

// line is the line of r (an open line, or a stream line), its fields
// clipped to the reader's bounds.
func (r *Record) line(now time.Time) lineOf {
	if r.Opened {
		return &openLine{
			Time: lineTime(r.Time, now), Type: TypeOpen, Request: field(r.Request, maxField), Backend: field(r.Backend, maxField),
			Service: field(r.Service, maxField), DurationMicros: r.Duration.Microseconds(),
			Relay: field(r.Relay, maxField), Session: field(r.Session, maxField),
		}
	}
	return &streamLine{
		Time: lineTime(r.Time, now), Type: TypeStream, Request: field(r.Request, maxField), Backend: field(r.Backend, maxField),
		Service: field(r.Service, maxField), Code: field(r.Code, maxField), End: field(r.End, maxField),
		BytesToService: r.BytesToService, BytesFromService: r.BytesFromService, DurationMicros: r.Duration.Microseconds(),
		Relay: field(r.Relay, maxField), Session: field(r.Session, maxField), Message: field(r.Message, maxMessage),
	}
}
