package protocol_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/tetherhq/tether/protocol"
)

func TestStreamHeaderRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		h    protocol.StreamHeader
	}{
		{"service only", protocol.StreamHeader{Service: "ssh"}},
		{"all fields", protocol.StreamHeader{Service: "postgres", Backend: "backend:billing", RequestID: "01HZX3K8Q9"}},
		{"maximum lengths", protocol.StreamHeader{
			Service:   strings.Repeat("s", protocol.MaxServiceLen),
			Backend:   strings.Repeat("b", protocol.MaxBackendLen),
			RequestID: strings.Repeat("r", protocol.MaxRequestIDLen),
		}},
		{"length needing a two-byte uvarint", protocol.StreamHeader{Service: "x", Backend: strings.Repeat("b", 200)}},
		{"multi-byte UTF-8", protocol.StreamHeader{Service: "dienst-ü", Backend: "backend:日本", RequestID: "r-1"}},
		{"empty request id, set backend", protocol.StreamHeader{Service: "web", Backend: "backend:x"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := protocol.WriteStreamHeader(&buf, tc.h); err != nil {
				t.Fatalf("WriteStreamHeader: %v", err)
			}
			appended, err := tc.h.AppendBinary([]byte("prefix"))
			if err != nil {
				t.Fatalf("AppendBinary: %v", err)
			}
			if got, want := appended, append([]byte("prefix"), buf.Bytes()...); !bytes.Equal(got, want) {
				t.Errorf("AppendBinary got %x, want the WriteStreamHeader bytes after the prefix %x", got, want)
			}
			buf.WriteString("payload")
			got, err := protocol.ReadStreamHeader(&buf)
			if err != nil {
				t.Fatalf("ReadStreamHeader: %v", err)
			}
			if got != tc.h {
				t.Errorf("got %+v, want %+v", got, tc.h)
			}
			if rest := buf.String(); rest != "payload" {
				t.Errorf("got %q left in the reader, want %q", rest, "payload")
			}
		})
	}
}

// TestStreamHeaderWireFormat pins the encoding: relays and agents of
// different versions must agree on it byte for byte.
func TestStreamHeaderWireFormat(t *testing.T) {
	h := protocol.StreamHeader{Service: "ssh", Backend: "backend:billing", RequestID: "r1"}
	want := []byte{
		1,       // version
		0, 0x17, // body length 23
		3, 's', 's', 'h',
		15, 'b', 'a', 'c', 'k', 'e', 'n', 'd', ':', 'b', 'i', 'l', 'l', 'i', 'n', 'g',
		2, 'r', '1',
	}
	got, err := h.AppendBinary(nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("got %x, want %x", got, want)
	}
	body, err := protocol.ParseStreamHeaderBody(want[3:])
	if err != nil {
		t.Fatalf("ParseStreamHeaderBody: %v", err)
	}
	if body != h {
		t.Errorf("ParseStreamHeaderBody got %+v, want %+v", body, h)
	}
}

func TestWriteStreamHeaderSingleWrite(t *testing.T) {
	w := &writeRecorder{}
	if err := protocol.WriteStreamHeader(w, protocol.StreamHeader{Service: "ssh", Backend: "b", RequestID: "r"}); err != nil {
		t.Fatal(err)
	}
	if got := len(w.writes); got != 1 {
		t.Errorf("got %d Write calls, want 1", got)
	}
	w = &writeRecorder{err: errWrite}
	if err := protocol.WriteStreamHeader(w, protocol.StreamHeader{Service: "ssh"}); !errors.Is(err, errWrite) {
		t.Errorf("got error %v, want the writer's error %v", err, errWrite)
	}
}

// TestStreamHeaderEncodeRefuses checks that the encoder refuses exactly what
// the decoder would refuse, so a relay never sends a header that every agent
// rejects.
func TestStreamHeaderEncodeRefuses(t *testing.T) {
	tests := []struct {
		name string
		h    protocol.StreamHeader
	}{
		{"empty service", protocol.StreamHeader{Backend: "backend:x"}},
		{"service too long", protocol.StreamHeader{Service: strings.Repeat("s", protocol.MaxServiceLen+1)}},
		{"backend too long", protocol.StreamHeader{Service: "s", Backend: strings.Repeat("b", protocol.MaxBackendLen+1)}},
		{"request id too long", protocol.StreamHeader{Service: "s", RequestID: strings.Repeat("r", protocol.MaxRequestIDLen+1)}},
		{"service not UTF-8", protocol.StreamHeader{Service: "s\xff"}},
		{"backend not UTF-8", protocol.StreamHeader{Service: "s", Backend: "\xc3"}},
		{"request id not UTF-8", protocol.StreamHeader{Service: "s", RequestID: "\xed\xa0\x80"}}, // a UTF-16 surrogate
		{"request id with a newline", protocol.StreamHeader{Service: "s", RequestID: "r\nforged"}},
		{"request id with a space", protocol.StreamHeader{Service: "s", RequestID: "r 1"}},
		{"request id not ASCII", protocol.StreamHeader{Service: "s", RequestID: "🙂"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			checkCode(t, tc.h.Validate(), protocol.ErrBadRequest)
			in := []byte("keep")
			got, err := tc.h.AppendBinary(in)
			checkCode(t, err, protocol.ErrBadRequest)
			if !bytes.Equal(got, []byte("keep")) {
				t.Errorf("AppendBinary on error got %q, want the input unchanged %q", got, "keep")
			}
			w := &writeRecorder{}
			checkCode(t, protocol.WriteStreamHeader(w, tc.h), protocol.ErrBadRequest)
			if len(w.writes) != 0 {
				t.Errorf("got %d Write calls for an invalid header, want 0", len(w.writes))
			}
		})
	}
}

// TestReadStreamHeaderTruncated cuts a valid header at every byte offset.
// Nothing is a clean end except an empty input; everything else is an
// unexpected EOF.
func TestReadStreamHeaderTruncated(t *testing.T) {
	full, err := protocol.StreamHeader{Service: "ssh", Backend: "backend:billing", RequestID: "r1"}.AppendBinary(nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range len(full) {
		t.Run(fmt.Sprintf("at %d", i), func(t *testing.T) {
			_, err := protocol.ReadStreamHeader(bytes.NewReader(full[:i]))
			want := io.ErrUnexpectedEOF
			if i == 0 {
				want = io.EOF
			}
			if !errors.Is(err, want) {
				t.Errorf("got error %v, want one that matches %v", err, want)
			}
		})
	}
}

// TestParseStreamHeaderBodyTruncated cuts a valid body at every byte offset:
// every field is required, so every proper prefix is an error.
func TestParseStreamHeaderBodyTruncated(t *testing.T) {
	full, err := protocol.StreamHeader{Service: "ssh", Backend: "backend:billing", RequestID: "r1"}.AppendBinary(nil)
	if err != nil {
		t.Fatal(err)
	}
	body := full[3:]
	for i := range len(body) {
		h, err := protocol.ParseStreamHeaderBody(body[:i])
		if !errors.Is(err, protocol.ErrBadRequest) {
			t.Errorf("at %d: got %+v, %v, want a bad_request error", i, h, err)
		}
	}
}

// header frames body with version 1 and the body's real length.
func header(body []byte) []byte {
	b := []byte{1, 0, 0}
	binary.BigEndian.PutUint16(b[1:], uint16(len(body)))
	return append(b, body...)
}

func TestReadStreamHeaderHostile(t *testing.T) {
	valid := concat(field("ssh"), field("backend:x"), field("r1"))
	overflow := bytes.Repeat([]byte{0xff}, 10) // a uvarint longer than 64 bits
	tests := []struct {
		name string
		in   []byte
	}{
		{"version 0", append([]byte{0}, header(valid)[1:]...)},
		{"version 2", append([]byte{2}, header(valid)[1:]...)},
		{"version 255", append([]byte{255}, header(valid)[1:]...)},
		{"body length over the limit", binary.BigEndian.AppendUint16([]byte{1}, protocol.MaxHeaderBody+1)},
		{"body length 65535", []byte{1, 0xff, 0xff}},
		{"empty body", header(nil)},
		{"empty service", header(concat(field(""), field("b"), field("r")))},
		{"service too long", header(concat(field(strings.Repeat("s", protocol.MaxServiceLen+1)), field(""), field("")))},
		{"backend too long", header(concat(field("s"), field(strings.Repeat("b", protocol.MaxBackendLen+1)), field("")))},
		{"request id too long", header(concat(field("s"), field(""), field(strings.Repeat("r", protocol.MaxRequestIDLen+1))))},
		{"service length 2^62", header(concat(binary.AppendUvarint(nil, 1<<62), []byte("ssh")))},
		{"service length overflows uvarint", header(concat(overflow, []byte("ssh")))},
		{"service length longer than body", header(concat([]byte{10}, []byte("ssh")))},
		{"service not UTF-8", header(concat(field("ss\xff"), field(""), field("")))},
		{"backend not UTF-8", header(concat(field("s"), field("\xc0\xaf"), field("")))}, // overlong '/'
		{"request id not UTF-8", header(concat(field("s"), field(""), field("\xed\xa0\x80")))},
		{"request id with an escape", header(concat(field("s"), field(""), field("r\x1b[8m")))},
		{"request id not ASCII", header(concat(field("s"), field(""), field("🙂")))},
		{"missing request id", header(concat(field("s"), field("b")))},
		{"extension tag truncated", header(concat(valid, []byte{0x80}))},
		{"extension tag overflows uvarint", header(concat(valid, overflow))},
		{"extension without length", header(concat(valid, []byte{7}))},
		{"extension length longer than body", header(concat(valid, []byte{7, 5, 'x'}))},
		{"extension length 2^62", header(concat(valid, []byte{7}, binary.AppendUvarint(nil, 1<<62)))},
		{"second extension truncated", header(concat(valid, []byte{7, 1, 'x', 8}))},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := &readRecorder{data: tc.in}
			h, err := protocol.ReadStreamHeader(r)
			if !errors.Is(err, protocol.ErrBadRequest) {
				t.Errorf("got %+v, %v, want a bad_request error", h, err)
			}
			if h != (protocol.StreamHeader{}) {
				t.Errorf("got header %+v with the error, want the zero header", h)
			}
			if r.pastEnd != 0 {
				t.Errorf("got %d reads past the header, want 0", r.pastEnd)
			}
		})
	}
}

// TestReadStreamHeaderSkipsExtensions checks that extensions a newer relay
// may add are skipped, whatever their tag and length.
func TestReadStreamHeaderSkipsExtensions(t *testing.T) {
	want := protocol.StreamHeader{Service: "ssh", Backend: "backend:x", RequestID: "r1"}
	fields := concat(field(want.Service), field(want.Backend), field(want.RequestID))
	ext := func(tag uint64, val string) []byte {
		return concat(binary.AppendUvarint(nil, tag), field(val))
	}
	tests := []struct {
		name string
		exts []byte
	}{
		{"one extension", ext(1, "hello")},
		{"empty extension", ext(2, "")},
		{"several extensions", concat(ext(1, "a"), ext(300, "bb"), ext(1, "a"))},
		{"large tag", ext(1<<63, "x")},
		{"binary and non-UTF-8 value", ext(9, "\x00\xff\xfe")},
		{"extension filling the body", ext(5, strings.Repeat("e", protocol.MaxHeaderBody-len(fields)-3))},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := concat(header(concat(fields, tc.exts)), []byte("payload"))
			r := bytes.NewReader(in)
			got, err := protocol.ReadStreamHeader(r)
			if err != nil {
				t.Fatalf("ReadStreamHeader: %v", err)
			}
			if got != want {
				t.Errorf("got %+v, want %+v", got, want)
			}
			rest, _ := io.ReadAll(r)
			if string(rest) != "payload" {
				t.Errorf("got %q left in the reader, want %q", rest, "payload")
			}
		})
	}
}

// TestReadStreamHeaderBoundsAllocation announces the largest body the u16
// length allows and checks that the decoder refuses it without allocating
// or reading it.
func TestReadStreamHeaderBoundsAllocation(t *testing.T) {
	in := []byte{1, 0xff, 0xff}
	var r readRecorder
	perRun := allocBytesPerRun(100, func() {
		r = readRecorder{data: in}
		if _, err := protocol.ReadStreamHeader(&r); err == nil {
			t.Fatal("got no error for an oversized header")
		}
	})
	if perRun >= 0xffff/4 {
		t.Errorf("got %d bytes allocated per refused header, want far fewer than the %d announced", perRun, 0xffff)
	}
	if r.pastEnd != 0 || r.biggestRq > 3 {
		t.Errorf("got %d reads past the prefix and a largest read of %d bytes, want none and 3", r.pastEnd, r.biggestRq)
	}
}

func TestReplyRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		r    protocol.Reply
	}{
		{"ok", protocol.Reply{}},
		{"ok with message", protocol.Reply{Code: protocol.CodeOK, Message: "connected"}},
		{"refusal", protocol.Reply{Code: protocol.CodeUnknownService, Message: `no service "ssh"`}},
		{"unknown code 255", protocol.Reply{Code: 255, Message: "from the future"}},
		{"multi-byte UTF-8", protocol.Reply{Code: protocol.CodeNotAllowed, Message: "nicht erlaubt: 日本 🙂"}},
		{"longest message", protocol.Reply{Code: protocol.CodeInternal, Message: strings.Repeat("m", protocol.MaxReplyMessage)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := &writeRecorder{}
			if err := protocol.WriteReply(w, tc.r); err != nil {
				t.Fatalf("WriteReply: %v", err)
			}
			if len(w.writes) != 1 {
				t.Errorf("got %d Write calls, want 1", len(w.writes))
			}
			in := bytes.NewBuffer(concat(w.writes...))
			in.WriteString("payload")
			got, err := protocol.ReadReply(in)
			if err != nil {
				t.Fatalf("ReadReply: %v", err)
			}
			if got != tc.r {
				t.Errorf("got %+v, want %+v", got, tc.r)
			}
			if rest := in.String(); rest != "payload" {
				t.Errorf("got %q left in the reader, want %q", rest, "payload")
			}
		})
	}
}

func TestReplyWireFormat(t *testing.T) {
	var buf bytes.Buffer
	if err := protocol.WriteReply(&buf, protocol.Reply{Code: protocol.CodeNoAgent, Message: "hi"}); err != nil {
		t.Fatal(err)
	}
	want := []byte{1, 6, 0, 2, 'h', 'i'}
	if got := buf.Bytes(); !bytes.Equal(got, want) {
		t.Errorf("got %x, want %x", got, want)
	}
}

func TestWriteReplyError(t *testing.T) {
	if err := protocol.WriteReply(&writeRecorder{err: errWrite}, protocol.Reply{}); !errors.Is(err, errWrite) {
		t.Errorf("got error %v, want the writer's error %v", err, errWrite)
	}
}

// TestWriteReplySanitises checks that whatever message WriteReply is given,
// the bytes it writes are a reply ReadReply accepts: long messages are cut
// at a rune boundary and invalid UTF-8 (an error text quoting raw bytes) is
// replaced, so the reply's code is never lost.
func TestWriteReplySanitises(t *testing.T) {
	long := strings.Repeat("a", protocol.MaxReplyMessage-1) + "é" + "tail" // é straddles the limit
	tests := []struct {
		name    string
		message string
		want    string
	}{
		{"one byte too long", strings.Repeat("x", protocol.MaxReplyMessage+1), strings.Repeat("x", protocol.MaxReplyMessage)},
		{"far too long", strings.Repeat("x", 70000), strings.Repeat("x", protocol.MaxReplyMessage)},
		{"rune across the limit", long, strings.Repeat("a", protocol.MaxReplyMessage-1)},
		{"4-byte runes", strings.Repeat("🙂", 300), strings.Repeat("🙂", protocol.MaxReplyMessage/4)},
		{"invalid byte", "dial \xff: refused", "dial \uFFFD: refused"},
		{"truncated rune at the end", "abc\xe6\x97", "abc\uFFFD"},
		{"invalid byte in a long message", "\xff" + strings.Repeat("x", 2000), "\uFFFD" + strings.Repeat("x", protocol.MaxReplyMessage-3)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := protocol.WriteReply(&buf, protocol.Reply{Code: protocol.CodeTargetUnreachable, Message: tc.message}); err != nil {
				t.Fatalf("WriteReply: %v", err)
			}
			got, err := protocol.ReadReply(&buf)
			if err != nil {
				t.Fatalf("ReadReply: %v", err)
			}
			if got.Code != protocol.CodeTargetUnreachable {
				t.Errorf("got code %v, want %v", got.Code, protocol.CodeTargetUnreachable)
			}
			if got.Message != tc.want {
				t.Errorf("got message %.20q… (%d bytes), want %.20q… (%d bytes)", got.Message, len(got.Message), tc.want, len(tc.want))
			}
			if len(got.Message) > protocol.MaxReplyMessage || !utf8.ValidString(got.Message) {
				t.Errorf("got a message of %d bytes, valid UTF-8 %v; want at most %d bytes of valid UTF-8",
					len(got.Message), utf8.ValidString(got.Message), protocol.MaxReplyMessage)
			}
		})
	}
}

func TestReadReplyTruncated(t *testing.T) {
	var buf bytes.Buffer
	if err := protocol.WriteReply(&buf, protocol.Reply{Code: protocol.CodeTimeout, Message: "too slow"}); err != nil {
		t.Fatal(err)
	}
	full := buf.Bytes()
	for i := range len(full) {
		t.Run(fmt.Sprintf("at %d", i), func(t *testing.T) {
			_, err := protocol.ReadReply(bytes.NewReader(full[:i]))
			want := io.ErrUnexpectedEOF
			if i == 0 {
				want = io.EOF
			}
			if !errors.Is(err, want) {
				t.Errorf("got error %v, want one that matches %v", err, want)
			}
		})
	}
}

func TestReadReplyHostile(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
	}{
		{"version 0", []byte{0, 0, 0, 0}},
		{"version 2", []byte{2, 0, 0, 0}},
		{"message over the limit", binary.BigEndian.AppendUint16([]byte{1, 3}, protocol.MaxReplyMessage+1)},
		{"message length 65535", []byte{1, 3, 0xff, 0xff}},
		{"invalid byte", []byte{1, 3, 0, 2, 'a', 0xff}},
		{"overlong encoding", []byte{1, 3, 0, 2, 0xc0, 0xaf}},
		{"surrogate", []byte{1, 3, 0, 3, 0xed, 0xa0, 0x80}},
		{"truncated rune", []byte{1, 3, 0, 2, 'a', 0xe6}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := &readRecorder{data: tc.in}
			got, err := protocol.ReadReply(r)
			if !errors.Is(err, protocol.ErrBadRequest) {
				t.Errorf("got %+v, %v, want a bad_request error", got, err)
			}
			if got != (protocol.Reply{}) {
				t.Errorf("got reply %+v with the error, want the zero reply", got)
			}
			if r.pastEnd != 0 {
				t.Errorf("got %d reads past the reply, want 0", r.pastEnd)
			}
		})
	}
}

func TestReadReplyBoundsAllocation(t *testing.T) {
	in := []byte{1, 3, 0xff, 0xff}
	var r readRecorder
	perRun := allocBytesPerRun(100, func() {
		r = readRecorder{data: in}
		if _, err := protocol.ReadReply(&r); err == nil {
			t.Fatal("got no error for an oversized reply")
		}
	})
	if perRun >= 0xffff/4 {
		t.Errorf("got %d bytes allocated per refused reply, want far fewer than the %d announced", perRun, 0xffff)
	}
	if r.pastEnd != 0 || r.biggestRq > 4 {
		t.Errorf("got %d reads past the prefix and a largest read of %d bytes, want none and 4", r.pastEnd, r.biggestRq)
	}
}

func TestReplyErr(t *testing.T) {
	tests := []struct {
		name     string
		r        protocol.Reply
		wantNil  bool
		sentinel error
	}{
		{"ok", protocol.Reply{}, true, nil},
		{"ok ignores message", protocol.Reply{Message: "fine"}, true, nil},
		{"unknown service", protocol.Reply{Code: protocol.CodeUnknownService, Message: "no ssh"}, false, protocol.ErrUnknownService},
		{"not allowed without message", protocol.Reply{Code: protocol.CodeNotAllowed}, false, protocol.ErrNotAllowed},
		{"unknown code", protocol.Reply{Code: 200, Message: "new"}, false, &protocol.Error{Code: 200}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.r.Err()
			if tc.wantNil {
				if err != nil {
					t.Errorf("got %v, want nil", err)
				}
				return
			}
			var pe *protocol.Error
			if !errors.As(err, &pe) {
				t.Fatalf("got %T %v, want a *protocol.Error", err, err)
			}
			if pe.Code != tc.r.Code || pe.Message != tc.r.Message {
				t.Errorf("got code %v message %q, want %v %q", pe.Code, pe.Message, tc.r.Code, tc.r.Message)
			}
			if !errors.Is(err, tc.sentinel) {
				t.Errorf("got %v, want it to match %v", err, tc.sentinel)
			}
		})
	}
}

func TestReplyFor(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want protocol.Reply
	}{
		{"nil", nil, protocol.Reply{}},
		{"protocol error", protocol.Errorf(protocol.CodeNoAgent, "tenant %s", "acme"), protocol.Reply{Code: protocol.CodeNoAgent, Message: "tenant acme"}},
		{"wrapped protocol error", fmt.Errorf("open: %w", protocol.Errorf(protocol.CodeTimeout, "5s")), protocol.Reply{Code: protocol.CodeTimeout, Message: "5s"}},
		{"sentinel", protocol.ErrUnavailable, protocol.Reply{Code: protocol.CodeUnavailable}},
		{"plain error", errors.New("boom"), protocol.Reply{Code: protocol.CodeInternal, Message: "boom"}},
		{"wrapped plain error", fmt.Errorf("dial: %w", io.ErrUnexpectedEOF), protocol.Reply{Code: protocol.CodeInternal, Message: "dial: unexpected EOF"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := protocol.ReplyFor(tc.err); got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
			// An error survives the trip through a Reply with its code.
			if got, want := protocol.CodeOf(protocol.ReplyFor(tc.err).Err()), protocol.CodeOf(tc.err); got != want {
				t.Errorf("got code %v after ReplyFor(err).Err(), want %v", got, want)
			}
		})
	}
}
