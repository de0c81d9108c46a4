package protocol_test

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/tetherhq/tether/protocol"
)

// The fuzzers below share one shape: decode arbitrary bytes (never panic,
// never allocate past the limits), and when decoding succeeds, encode the
// value and decode it again to get the same value back. Seeds are added in
// code here and kept in testdata/fuzz/<FuzzName>/.

func FuzzReadStreamHeader(f *testing.F) {
	for _, h := range []protocol.StreamHeader{
		{Service: "ssh"},
		{Service: "postgres", Backend: "backend:billing", RequestID: "01HZX3K8Q9"},
		{Service: "dienst-ü", Backend: "日本", RequestID: "r~!"},
	} {
		b, err := h.AppendBinary(nil)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(append(b, "payload"...))
	}
	valid := concat(field("ssh"), field("b"), field("r"))
	f.Add(header(concat(valid, []byte{7, 3, 'e', 'x', 't'}, []byte{0x80, 0x01, 0})))     // extensions
	f.Add(header(concat(valid, []byte{7, 9, 'x'})))                                      // extension past the end
	f.Add(header(concat(bytes.Repeat([]byte{0xff}, 10), []byte{1})))                     // uvarint overflow
	f.Add(header(concat(field("s\xff"), field(""), field(""))))                          // not UTF-8
	f.Add(header(concat(field("s"), field(""), field("r\n1"))))                          // request id not printable
	f.Add([]byte{1, 0xff, 0xff})                                                         // body too long
	f.Add([]byte{2, 0, 0})                                                               // bad version
	f.Add([]byte{1, 0, 6, 0x80, 0x00, 0x81, 0x00, 0x80, 0x00})                           // non-minimal uvarints
	f.Add(header(concat(field("x"), field(""), field(""), []byte{0xff, 0xff, 0xff, 0}))) // extension with a long tag
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		h, err := protocol.ReadStreamHeader(r)
		if err != nil {
			if h != (protocol.StreamHeader{}) {
				t.Fatalf("got header %+v with error %v, want the zero header", h, err)
			}
			return
		}
		if consumed, want := len(data)-r.Len(), 3+int(binary.BigEndian.Uint16(data[1:3])); consumed != want {
			t.Fatalf("consumed %d bytes, want the %d of the header", consumed, want)
		}
		if !utf8.ValidString(h.Service) || !utf8.ValidString(h.Backend) || !utf8.ValidString(h.RequestID) {
			t.Fatalf("got %+v, want valid UTF-8 fields", h)
		}
		enc, err := h.AppendBinary(nil)
		if err != nil {
			t.Fatalf("decoded %+v but cannot encode it: %v", h, err)
		}
		got, err := protocol.ReadStreamHeader(bytes.NewReader(enc))
		if err != nil {
			t.Fatalf("cannot decode the re-encoding %x of %+v: %v", enc, h, err)
		}
		if got != h {
			t.Fatalf("got %+v after a round trip, want %+v", got, h)
		}
		again, err := got.AppendBinary(nil)
		if err != nil || !bytes.Equal(again, enc) {
			t.Fatalf("got %x, %v encoding a second time, want %x", again, err, enc)
		}
	})
}

func FuzzReadReply(f *testing.F) {
	for _, r := range []protocol.Reply{
		{},
		{Code: protocol.CodeUnknownService, Message: `no service "ssh"`},
		{Code: 255, Message: "日本 🙂"},
	} {
		var buf bytes.Buffer
		if err := protocol.WriteReply(&buf, r); err != nil {
			f.Fatal(err)
		}
		f.Add(buf.Bytes())
		f.Add(append(buf.Bytes(), "payload"...))
	}
	f.Add([]byte{1, 3, 0xff, 0xff})             // message too long
	f.Add([]byte{1, 3, 0, 2, 'a', 0xff})        // not UTF-8
	f.Add([]byte{0, 0, 0, 0})                   // bad version
	f.Add([]byte{1, 3, 0, 5, 'a', 'b'})         // truncated
	f.Add([]byte{1, 9, 0, 3, 0xe6, 0x97, 0xa5}) // one 3-byte rune
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		rep, err := protocol.ReadReply(r)
		if err != nil {
			if rep != (protocol.Reply{}) {
				t.Fatalf("got reply %+v with error %v, want the zero reply", rep, err)
			}
			return
		}
		if consumed, want := len(data)-r.Len(), 4+len(rep.Message); consumed != want {
			t.Fatalf("consumed %d bytes, want the %d of the reply", consumed, want)
		}
		if len(rep.Message) > protocol.MaxReplyMessage || !utf8.ValidString(rep.Message) {
			t.Fatalf("got a message of %d bytes (valid UTF-8: %v), want at most %d valid bytes",
				len(rep.Message), utf8.ValidString(rep.Message), protocol.MaxReplyMessage)
		}
		var buf bytes.Buffer
		if err := protocol.WriteReply(&buf, rep); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf.Bytes(), data[:4+len(rep.Message)]) {
			t.Fatalf("got %x re-encoding %+v, want the input %x", buf.Bytes(), rep, data[:4+len(rep.Message)])
		}
		got, err := protocol.ReadReply(&buf)
		if err != nil {
			t.Fatalf("cannot decode the re-encoding of %+v: %v", rep, err)
		}
		if got != rep {
			t.Fatalf("got %+v after a round trip, want %+v", got, rep)
		}
	})
}

// FuzzParseCloseReason: the reason of a relay's QUIC close is text from
// the network. Parsing never panics and yields a refusal whose encoding
// reads back the same; encoding any message stays within MaxCloseReason,
// valid UTF-8, and reads back with its code.
func FuzzParseCloseReason(f *testing.F) {
	for _, s := range []string{
		"revoked",
		"revoked: agent a1 was revoked at 2026-12-07T19:30:00Z (laptop stolen): enrol it again with a new join token if it should serve",
		"unauthenticated: CA root 2 (sha256:ab12): retired",
		"certificate_expired: ",
		"relay busy",
		"ok",
		"code_200: x",
		"revoked: \xff\xfe",
		"revoked: \x1b[2J\nforged line",
		"revoked: " + strings.Repeat("é", 300),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if pe, ok := protocol.ParseCloseReason(s); ok {
			if pe.Code == protocol.CodeOK || len(pe.Message) > protocol.MaxCloseReason || !utf8.ValidString(pe.Message) {
				t.Fatalf("ParseCloseReason(%q) = %v %q, want a refusal with a valid message", s, pe.Code, pe.Message)
			}
			enc := protocol.CloseReason(pe)
			got, ok := protocol.ParseCloseReason(enc)
			if !ok || *got != *pe {
				t.Fatalf("%q parsed to %+v, encoded to %q, which parses to %+v, %v", s, pe, enc, got, ok)
			}
		}
		enc := protocol.CloseReason(protocol.Errorf(protocol.CodeRevoked, "%s", s))
		if len(enc) > protocol.MaxCloseReason || !utf8.ValidString(enc) {
			t.Fatalf("CloseReason of %q is %d bytes (valid UTF-8: %v), want at most %d valid bytes", s, len(enc), utf8.ValidString(enc), protocol.MaxCloseReason)
		}
		got, ok := protocol.ParseCloseReason(enc)
		if !ok || got.Code != protocol.CodeRevoked {
			t.Fatalf("CloseReason of %q is %q, which parses to %+v, %v, want revoked", s, enc, got, ok)
		}
		if msg := strings.ToValidUTF8(s, "\uFFFD"); got.Message != msg {
			kept, cut := strings.CutSuffix(got.Message, "…")
			if !cut || !strings.HasPrefix(msg, kept) {
				t.Fatalf("CloseReason of %q is %q, whose message is neither the whole nor a marked prefix", s, enc)
			}
		}
	})
}

// normalize makes a decoded message comparable with reflect.DeepEqual after
// a JSON round trip: a field tagged omitempty that held an empty, non-nil
// slice or map comes back nil. It sets every empty slice and map in m,
// at any depth, to nil, in place: call it last on a decoded message.
func normalize(m protocol.Message) protocol.Message {
	nilEmpty(reflect.ValueOf(m))
	return m
}

func nilEmpty(v reflect.Value) {
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if !v.IsNil() {
			nilEmpty(v.Elem())
		}
	case reflect.Struct:
		for i := range v.NumField() {
			if f := v.Field(i); f.CanSet() {
				nilEmpty(f)
			}
		}
	case reflect.Slice:
		if v.Len() == 0 && !v.IsNil() && v.CanSet() {
			v.SetZero()
			return
		}
		for i := range v.Len() {
			nilEmpty(v.Index(i))
		}
	case reflect.Map:
		if v.Len() == 0 && !v.IsNil() && v.CanSet() {
			v.SetZero()
		}
	}
}

func FuzzReadMessage(f *testing.F) {
	for _, s := range sampleMessages() {
		b, err := protocol.AppendMessage(nil, s.m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	var stream []byte
	for _, s := range sampleMessages()[:4] {
		stream, _ = protocol.AppendMessage(stream, s.m)
	}
	f.Add(stream) // several frames
	f.Add(concat([]byte{1}, field(`{"capabilities":[],"protocol_version":1}`)))
	f.Add(concat([]byte{7}, field(`{"csr":"","token":"t"}`)))
	f.Add(concat([]byte{3}, field("{\"message\":\"a\xffb\\ud800<&>\"}")))
	f.Add(concat([]byte{4}, field(`{"seq":-1}`)))
	f.Add(concat([]byte{5}, field(`{"SEQ":18446744073709551615,"x":{}}`)))
	f.Add(concat([]byte{6}, field(`null`)))
	f.Add(concat([]byte{6}, field(`{"reason":"shutdown","drain_ms":-1}`)))
	f.Add(concat([]byte{6}, field(`{"reason":"shutdown","drain_ms":9223372036854775807}`)))
	f.Add(concat([]byte{6}, field(`{"reason":"shutdown","drain_ms":1e300}`)))
	f.Add(concat([]byte{11}, field(`{"root":"","spread_ms":-1}`)))
	f.Add(concat([]byte{7}, field(`{"token":"t","capabilities":[]}`)))
	f.Add(concat([]byte{1}, binary.AppendUvarint(nil, protocol.MaxMessageSize+1)))
	f.Add(concat([]byte{1}, bytes.Repeat([]byte{0xff}, 10), []byte{1}))
	f.Add([]byte{0x80, 0x80})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bufio.NewReader(bytes.NewReader(data))
		for {
			m, err := protocol.ReadMessage(r)
			if err != nil {
				if m != nil {
					t.Fatalf("got message %#v with error %v, want nil", m, err)
				}
				return
			}
			checkMessageRoundTrip(t, m)
			if g, ok := m.(*protocol.GoAway); ok {
				if d := g.DrainTimeout(); d < 0 || d > protocol.MaxGoAwayDrain {
					t.Fatalf("GoAway with drain_ms %d asks for a drain of %v, want 0 to %v", g.DrainMillis, d, protocol.MaxGoAwayDrain)
				}
			}
		}
	})
}

func checkMessageRoundTrip(t *testing.T, m protocol.Message) {
	t.Helper()
	if u, ok := m.(*protocol.Unknown); ok && len(u.Payload) > protocol.MaxMessageSize {
		t.Fatalf("got an unknown message of %d bytes, want at most %d", len(u.Payload), protocol.MaxMessageSize)
	}
	if _, ok := m.(*protocol.Unknown); !ok {
		// encoding/json escapes <, > and & as \u00XX, so a payload near the
		// limit may not fit once re-encoded. That is not a decoding bug.
		js, err := json.Marshal(m)
		if err != nil {
			t.Fatalf("cannot marshal decoded %#v: %v", m, err)
		}
		if len(js) > protocol.MaxMessageSize {
			return
		}
	}
	enc, err := protocol.AppendMessage(nil, m)
	if err != nil {
		t.Fatalf("decoded %#v but cannot encode it: %v", m, err)
	}
	got, err := protocol.ReadMessage(bufio.NewReader(bytes.NewReader(enc)))
	if err != nil {
		t.Fatalf("cannot decode the re-encoding %q of %#v: %v", enc, m, err)
	}
	if got.Type() != m.Type() {
		t.Fatalf("got type %d after a round trip, want %d", got.Type(), m.Type())
	}
	again, err := protocol.AppendMessage(nil, got)
	if err != nil || !bytes.Equal(again, enc) {
		t.Fatalf("got %q, %v encoding a second time, want %q", again, err, enc)
	}
	// Last: normalize changes both messages.
	if !reflect.DeepEqual(normalize(got), normalize(m)) {
		t.Fatalf("got %#v after a round trip, want %#v", got, m)
	}
}

func FuzzParseJoinToken(f *testing.F) {
	tok := sampleToken()
	f.Add(tok.String())
	f.Add(protocol.JoinToken{}.String())
	f.Add(" " + tok.String() + "\n")
	f.Add(protocol.JoinTokenPrefix)
	f.Add("tjt1_AQ")
	f.Add(tok.String()[:50] + "\r\n" + tok.String()[50:]) // base64 skips line breaks
	f.Add(tok.String()[:len(tok.String())-1] + "B")       // non-zero padding bits
	f.Add(rawToken(concat([]byte{2}, make([]byte, 72))))
	f.Add(protocol.JoinTokenPrefix + "====")
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := protocol.ParseJoinToken(s)
		if err != nil {
			if tok != (protocol.JoinToken{}) {
				t.Fatalf("got token %+v with error %v, want the zero token", tok, err)
			}
			return
		}
		enc := tok.String()
		got, err := protocol.ParseJoinToken(enc)
		if err != nil {
			t.Fatalf("cannot parse the re-encoding %q: %v", enc, err)
		}
		if got != tok {
			t.Fatalf("got %+v after a round trip, want %+v", got, tok)
		}
		if again := got.String(); again != enc {
			t.Fatalf("got %q encoding a second time, want %q", again, enc)
		}
		if !tok.SecretMatches(tok.SecretHash()) {
			t.Fatal("got a token whose secret does not match its own hash")
		}
	})
}
