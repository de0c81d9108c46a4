package protocol_test

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
)

// sampleMessages has one fully populated value of every message type.
func sampleMessages() []struct {
	name string
	m    protocol.Message
} {
	return []struct {
		name string
		m    protocol.Message
	}{
		{"hello", &protocol.Hello{
			ProtocolVersion: protocol.Version, AgentVersion: "v1.2.3", OS: "linux", Arch: "arm64",
			Hostname: "db-1", Capabilities: []string{protocol.CapHeartbeat, protocol.CapGoAway},
			Transport: "tcp", TransportWhy: "fallback: quic handshake timed out",
		}},
		{"hello minimal", &protocol.Hello{ProtocolVersion: 1}},
		{"welcome", &protocol.Welcome{
			ProtocolVersion: 1, RelayVersion: "v1.0.0", AgentID: "a1", Tenant: "acme",
			SessionID: "s-9", HeartbeatMillis: 15000, Capabilities: []string{protocol.CapGoAway},
		}},
		{"welcome from a relay of a cluster", &protocol.Welcome{
			ProtocolVersion: 1, RelayVersion: "v1.1.0", AgentID: "a1", Tenant: "acme",
			SessionID: "s-10", HeartbeatMillis: 15000, Capabilities: []string{protocol.CapGoAway, protocol.CapRelays}, RelayID: "relay-2",
		}},
		{"relays", &protocol.Relays{Relays: protocol.RelayList{
			{ID: "relay-1", Addr: "10.0.0.1:7443"},
			{ID: "relay-2", Addr: "relay-2.example.com:443", Draining: true},
			{ID: "r3", Addr: "[2001:db8::3]:7443"},
		}}},
		{"relays, empty", &protocol.Relays{Relays: protocol.RelayList{}}},
		{"goaway leaving", &protocol.GoAway{Reason: protocol.GoAwayLeaving, Message: "relay-2 is leaving the cluster", DrainMillis: 60000}},
		{"reject", &protocol.Reject{Code: protocol.CodeUnknownAgent.String(), Message: "revoked"}},
		{"ping", &protocol.Ping{Seq: 1<<64 - 1}},
		{"pong", &protocol.Pong{Seq: 42}},
		{"goaway", &protocol.GoAway{Reason: "drain", Message: "relay restarting"}},
		{"goaway with drain", &protocol.GoAway{Reason: "shutdown", Message: "relay is shutting down", DrainMillis: 30000}},
		{"enroll request", &protocol.EnrollRequest{
			Token: "tjt1_x", CSR: []byte{0x30, 0x82, 0x00, 0xff}, Hostname: "h", OS: "windows", Arch: "amd64", AgentVersion: "v1",
			Capabilities: []string{protocol.CapRootBundle},
		}},
		{"enroll response", &protocol.EnrollResponse{
			AgentID: "a1", Tenant: "acme", TrustDomain: "tether.example",
			Certificate: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", CACertificates: "ca",
		}},
		{"renew request", &protocol.RenewRequest{CSR: []byte{0x30, 0x82, 0x01, 0x00}}},
		{"renew response", &protocol.RenewResponse{Certificate: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", CACertificates: "ca"}},
		{"renew now", &protocol.RenewNow{Root: "sha256:00ff", SpreadMillis: 120000}},
		{"update offer", &protocol.UpdateOffer{ID: "o1", Version: "1.2.3", Manifest: []byte(`{"version":"1.2.3"}`), ManifestSignature: []byte("sig"), BinarySignature: []byte("bsig")}},
		{"update fetch", &protocol.UpdateFetch{ID: "o1", Version: "1.2.3"}},
		{"update cancel", &protocol.UpdateCancel{ID: "o1", Version: "1.2.3", Code: "unavailable", Message: "release 1.2.3 was removed"}},
		{"update status", &protocol.UpdateStatus{ID: "o1", Version: "1.2.3", From: "1.2.2", State: protocol.UpdateRolledBack, Reason: "unhealthy", Message: "no connection"}},
		{"report", &protocol.Report{AgentVersion: "1.2.3", OS: "linux", Arch: "arm64", Hostname: "gw", StartedAt: 1800000000000, Transport: "tcp", TransportWhy: "configured", RTTMicros: 900,
			StreamsOpen: 1, StreamsTotal: 7, BytesIn: 1 << 40, BytesOut: 3, DialFailures: map[string]uint64{"db": 2}, LastDialError: "refused", CertNotAfter: 1800086400000,
			ConfigHash: "ab", ConfigError: "line 1", Services: []string{"api", "db"}}},
		{"report with relays", &protocol.Report{AgentVersion: "1.3.0", OS: "linux", Arch: "amd64", StartedAt: 1800000000000, Transport: "quic",
			Relays: []protocol.HeldRelay{{ID: "relay-1", Addr: "relays.example.com:7443"}, {ID: "relay-3", Addr: "10.0.0.3:7443"}, {Addr: "old-relay:7443"}}}},
		{"unicode strings", &protocol.GoAway{Reason: "shutdown", Message: "日本 🙂 <&> \"quoted\" \\ \u2028"}},
		{"unknown type", &protocol.Unknown{MessageType: 200, Payload: []byte("not even JSON \x00\xff")}},
		{"unknown type, empty payload", &protocol.Unknown{MessageType: 0, Payload: []byte{}}},
	}
}

func TestMessageRoundTrip(t *testing.T) {
	for _, tc := range sampleMessages() {
		t.Run(tc.name, func(t *testing.T) {
			w := &writeRecorder{}
			if err := protocol.WriteMessage(w, tc.m); err != nil {
				t.Fatalf("WriteMessage: %v", err)
			}
			if len(w.writes) != 1 {
				t.Errorf("got %d Write calls, want 1", len(w.writes))
			}
			appended, err := protocol.AppendMessage([]byte("prefix"), tc.m)
			if err != nil {
				t.Fatalf("AppendMessage: %v", err)
			}
			if got, want := appended, append([]byte("prefix"), w.writes[0]...); !bytes.Equal(got, want) {
				t.Errorf("AppendMessage got %q, want the WriteMessage bytes after the prefix %q", got, want)
			}
			if got, want := w.writes[0][0], byte(tc.m.Type()); got != want {
				t.Errorf("got type byte %d, want %d", got, want)
			}
			r := bufio.NewReader(bytes.NewReader(w.writes[0]))
			got, err := protocol.ReadMessage(r)
			if err != nil {
				t.Fatalf("ReadMessage: %v", err)
			}
			if !reflect.DeepEqual(got, tc.m) {
				t.Errorf("got %#v, want %#v", got, tc.m)
			}
			if _, err := protocol.ReadMessage(r); err != io.EOF {
				t.Errorf("got %v after the only message, want io.EOF", err)
			}
		})
	}
}

// TestMessageWireFormat pins the frame: type byte, uvarint length, JSON.
func TestMessageWireFormat(t *testing.T) {
	tests := []struct {
		name string
		m    protocol.Message
		want []byte
	}{
		{"ping", &protocol.Ping{Seq: 7}, []byte("\x04\x09{\"seq\":7}")},
		{"reject", &protocol.Reject{Code: "no_agent", Message: "m"}, []byte("\x03\x21{\"code\":\"no_agent\",\"message\":\"m\"}")},
		{"unknown", &protocol.Unknown{MessageType: 99, Payload: []byte("xyz")}, []byte("\x63\x03xyz")},
		{"two-byte length", &protocol.Unknown{MessageType: 9, Payload: bytes.Repeat([]byte{'p'}, 200)},
			append([]byte{9, 0xc8, 0x01}, bytes.Repeat([]byte{'p'}, 200)...)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := protocol.AppendMessage(nil, tc.m)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// TestReadMessageStream reads several frames from one reader and checks
// that the end of the stream at a frame boundary is exactly io.EOF.
func TestReadMessageStream(t *testing.T) {
	var buf bytes.Buffer
	samples := sampleMessages()
	for _, s := range samples {
		if err := protocol.WriteMessage(&buf, s.m); err != nil {
			t.Fatal(err)
		}
	}
	r := bufio.NewReader(&buf)
	for _, s := range samples {
		got, err := protocol.ReadMessage(r)
		if err != nil {
			t.Fatalf("%s: ReadMessage: %v", s.name, err)
		}
		if !reflect.DeepEqual(got, s.m) {
			t.Errorf("%s: got %#v, want %#v", s.name, got, s.m)
		}
	}
	if _, err := protocol.ReadMessage(r); err != io.EOF {
		t.Errorf("got %v at the end, want io.EOF", err)
	}
}

// TestReadMessageTruncated cuts a frame at every byte offset: only an empty
// input is a clean io.EOF, every other cut is io.ErrUnexpectedEOF.
func TestReadMessageTruncated(t *testing.T) {
	tests := []struct {
		name string
		m    protocol.Message
	}{
		{"hello", &protocol.Hello{ProtocolVersion: 1, AgentVersion: "v1", OS: "linux", Arch: "amd64"}},
		{"two-byte length", &protocol.Unknown{MessageType: 77, Payload: bytes.Repeat([]byte{'x'}, 300)}},
	}
	for _, tc := range tests {
		full, err := protocol.AppendMessage(nil, tc.m)
		if err != nil {
			t.Fatal(err)
		}
		for i := range len(full) {
			t.Run(fmt.Sprintf("%s at %d", tc.name, i), func(t *testing.T) {
				got, err := protocol.ReadMessage(bufio.NewReader(bytes.NewReader(full[:i])))
				if i == 0 {
					if err != io.EOF {
						t.Errorf("got %v, %v, want io.EOF itself", got, err)
					}
					return
				}
				if !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Errorf("got %v, %v, want an error that matches io.ErrUnexpectedEOF", got, err)
				}
			})
		}
	}
}

func TestReadMessageHostile(t *testing.T) {
	tests := []struct {
		name     string
		in       []byte
		sentinel error // nil: any error
	}{
		{"length one over the limit", concat([]byte{1}, binary.AppendUvarint(nil, protocol.MaxMessageSize+1)), protocol.ErrMessageTooLarge},
		{"length 2^62", concat([]byte{1}, binary.AppendUvarint(nil, 1<<62)), protocol.ErrMessageTooLarge},
		{"length 2^64-1", concat([]byte{200}, binary.AppendUvarint(nil, 1<<64-1)), protocol.ErrMessageTooLarge},
		{"length overflows uvarint", concat([]byte{1}, bytes.Repeat([]byte{0xff}, 10), []byte{1}), nil},
		{"not JSON", concat([]byte{4, 3}, []byte("abc")), protocol.ErrBadRequest},
		{"JSON array", concat([]byte{4, 2}, []byte("[]")), protocol.ErrBadRequest},
		{"JSON string", concat([]byte{3, 2}, []byte(`""`)), protocol.ErrBadRequest},
		{"wrong field type", concat([]byte{4}, field(`{"seq":"7"}`)), protocol.ErrBadRequest},
		{"negative unsigned", concat([]byte{5}, field(`{"seq":-1}`)), protocol.ErrBadRequest},
		{"fraction for an integer", concat([]byte{1}, field(`{"protocol_version":1.5}`)), protocol.ErrBadRequest},
		{"trailing data", concat([]byte{6}, field(`{"reason":"x"} {}`)), protocol.ErrBadRequest},
		{"empty payload of a known type", []byte{2, 0}, protocol.ErrBadRequest},
		{"CSR not base64", concat([]byte{7}, field(`{"csr":"!!"}`)), protocol.ErrBadRequest},
		{"nesting deeper than encoding/json allows", concat([]byte{1}, field(`{"x":`+strings.Repeat("[", 20000)+strings.Repeat("]", 20000)+`}`)), protocol.ErrBadRequest},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := protocol.ReadMessage(bufio.NewReader(bytes.NewReader(tc.in)))
			if err == nil {
				t.Fatalf("got %#v, want an error", got)
			}
			if got != nil {
				t.Errorf("got message %#v with error %v, want nil", got, err)
			}
			if tc.sentinel != nil && !errors.Is(err, tc.sentinel) {
				t.Errorf("got error %v, want one that matches %v", err, tc.sentinel)
			}
			if errors.Is(err, io.EOF) {
				t.Errorf("got error %v, which a caller would take for a clean end", err)
			}
		})
	}
}

// TestReadMessageBoundsAllocation checks that an oversized frame is refused
// before its payload is allocated or read.
func TestReadMessageBoundsAllocation(t *testing.T) {
	in := concat([]byte{1}, binary.AppendUvarint(nil, 4*protocol.MaxMessageSize))
	perRun := allocBytesPerRun(50, func() {
		_, err := protocol.ReadMessage(bufio.NewReaderSize(bytes.NewReader(in), 16))
		if !errors.Is(err, protocol.ErrMessageTooLarge) {
			t.Fatalf("got %v, want %v", err, protocol.ErrMessageTooLarge)
		}
	})
	if perRun >= protocol.MaxMessageSize {
		t.Errorf("got %d bytes allocated per refused frame, want far fewer than the %d announced", perRun, 4*protocol.MaxMessageSize)
	}
}

func TestMessageSizeLimit(t *testing.T) {
	t.Run("largest payload round-trips", func(t *testing.T) {
		m := &protocol.Unknown{MessageType: 100, Payload: bytes.Repeat([]byte{'x'}, protocol.MaxMessageSize)}
		b, err := protocol.AppendMessage(nil, m)
		if err != nil {
			t.Fatalf("AppendMessage: %v", err)
		}
		got, err := protocol.ReadMessage(bufio.NewReader(bytes.NewReader(b)))
		if err != nil {
			t.Fatalf("ReadMessage: %v", err)
		}
		if !reflect.DeepEqual(got, protocol.Message(m)) {
			t.Errorf("got a different %T back, want the %d-byte *protocol.Unknown sent", got, len(m.Payload))
		}
	})
	tooBig := []struct {
		name string
		m    protocol.Message
	}{
		{"unknown payload", &protocol.Unknown{MessageType: 100, Payload: make([]byte, protocol.MaxMessageSize+1)}},
		{"JSON", &protocol.EnrollResponse{Certificate: strings.Repeat("c", protocol.MaxMessageSize)}},
	}
	for _, tc := range tooBig {
		t.Run("refuses "+tc.name, func(t *testing.T) {
			b, err := protocol.AppendMessage([]byte("keep"), tc.m)
			if err == nil {
				t.Fatalf("got %d bytes and no error, want an error", len(b))
			}
			if string(b) != "keep" {
				t.Errorf("got %d bytes on error, want the input unchanged", len(b))
			}
			w := &writeRecorder{}
			if err := protocol.WriteMessage(w, tc.m); err == nil || len(w.writes) != 0 {
				t.Errorf("WriteMessage got error %v and %d writes, want an error and no write", err, len(w.writes))
			}
		})
	}
}

func TestWriteMessageError(t *testing.T) {
	if err := protocol.WriteMessage(&writeRecorder{err: errWrite}, &protocol.Ping{}); !errors.Is(err, errWrite) {
		t.Errorf("got %v, want the writer's error %v", err, errWrite)
	}
}

func TestDecodeMessage(t *testing.T) {
	tests := []struct {
		name    string
		typ     protocol.MessageType
		payload string
		want    protocol.Message
	}{
		{"unknown fields are ignored", protocol.TypePing, `{"seq":5,"future":{"a":[1,2]}}`, &protocol.Ping{Seq: 5}},
		{"missing fields are zero", protocol.TypeHello, `{}`, &protocol.Hello{}},
		{"null is the zero message", protocol.TypeWelcome, `null`, &protocol.Welcome{}},
		{"field names match case-insensitively", protocol.TypePong, `{"SEQ":3}`, &protocol.Pong{Seq: 3}},
		{"white space", protocol.TypeGoAway, " \n{ \"reason\" : \"drain\" }\t", &protocol.GoAway{Reason: "drain"}},
		{"goaway from a relay that sends no drain", protocol.TypeGoAway, `{"reason":"shutdown","message":"m"}`, &protocol.GoAway{Reason: "shutdown", Message: "m"}},
		{"goaway drain", protocol.TypeGoAway, `{"reason":"shutdown","drain_ms":30000}`, &protocol.GoAway{Reason: "shutdown", DrainMillis: 30000}},
		{"invalid UTF-8 becomes U+FFFD", protocol.TypeReject, "{\"code\":\"internal\",\"message\":\"a\xffb\"}", &protocol.Reject{Code: "internal", Message: "a\uFFFDb"}},
		{"lone surrogate escape becomes U+FFFD", protocol.TypeReject, `{"message":"\ud800"}`, &protocol.Reject{Message: "\uFFFD"}},
		{"null CSR", protocol.TypeEnrollRequest, `{"token":"t","csr":null}`, &protocol.EnrollRequest{Token: "t"}},
		{"unknown type 0", 0, `anything`, &protocol.Unknown{MessageType: 0, Payload: []byte("anything")}},
		{"unknown type 99", 99, `{"seq":1}`, &protocol.Unknown{MessageType: 99, Payload: []byte(`{"seq":1}`)}},
		{"renew now without fields", protocol.TypeRenewNow, `{}`, &protocol.RenewNow{}},
		{"enrol request capabilities", protocol.TypeEnrollRequest, `{"token":"t","capabilities":["root-bundle","future"]}`,
			&protocol.EnrollRequest{Token: "t", Capabilities: []string{protocol.CapRootBundle, "future"}}},
		{"renew refused", protocol.TypeRenewResponse, `{"code":"revoked","message":"m"}`, &protocol.RenewResponse{Code: "revoked", Message: "m"}},
		{"unknown type 255", 255, ``, &protocol.Unknown{MessageType: 255, Payload: []byte{}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := protocol.DecodeMessage(tc.typ, []byte(tc.payload))
			if err != nil {
				t.Fatalf("DecodeMessage: %v", err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %#v, want %#v", got, tc.want)
			}
			if got.Type() != tc.typ {
				t.Errorf("got type %d, want %d", got.Type(), tc.typ)
			}
		})
	}
}

func TestMessageTypes(t *testing.T) {
	tests := []struct {
		m    protocol.Message
		want protocol.MessageType
	}{
		{&protocol.Hello{}, 1},
		{&protocol.Welcome{}, 2},
		{&protocol.Reject{}, 3},
		{&protocol.Ping{}, 4},
		{&protocol.Pong{}, 5},
		{&protocol.GoAway{}, 6},
		{&protocol.EnrollRequest{}, 7},
		{&protocol.EnrollResponse{}, 8},
		{&protocol.RenewRequest{}, 9},
		{&protocol.RenewResponse{}, 10},
		{&protocol.RenewNow{}, 11},
		{&protocol.Report{}, 12},
		{&protocol.UpdateOffer{}, 13},
		{&protocol.UpdateFetch{}, 14},
		{&protocol.UpdateStatus{}, 15},
		{&protocol.Relays{}, 16},
		{&protocol.UpdateCancel{}, 17},
		{&protocol.Unknown{MessageType: 42}, 42},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%T", tc.m), func(t *testing.T) {
			if got := tc.m.Type(); got != tc.want {
				t.Errorf("got %d, want %d", got, tc.want)
			}
		})
	}
}

func TestRejectErr(t *testing.T) {
	tests := []struct {
		name        string
		r           protocol.Reject
		wantCode    protocol.Code
		wantMessage string
	}{
		{"known code", protocol.Reject{Code: "unknown_agent", Message: "revoked"}, protocol.CodeUnknownAgent, "revoked"},
		{"ok", protocol.Reject{Code: "ok"}, protocol.CodeOK, ""},
		{"unknown code name", protocol.Reject{Code: "from_the_future", Message: "m"}, protocol.CodeInternal, "from_the_future: m"},
		{"empty code name", protocol.Reject{Message: "m"}, protocol.CodeInternal, ": m"},
		{"code names are case-sensitive", protocol.Reject{Code: "NO_AGENT", Message: "m"}, protocol.CodeInternal, "NO_AGENT: m"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.r.Err()
			if got.Code != tc.wantCode || got.Message != tc.wantMessage {
				t.Errorf("got code %v message %q, want %v %q", got.Code, got.Message, tc.wantCode, tc.wantMessage)
			}
		})
	}
}

func TestRejectFor(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want protocol.Reject
	}{
		{"protocol error", protocol.Errorf(protocol.CodeTokenExpired, "expired at %d", 5), protocol.Reject{Code: "token_expired", Message: "expired at 5"}},
		{"wrapped", fmt.Errorf("enrol: %w", protocol.ErrTokenUsedUp), protocol.Reject{Code: "token_used_up"}},
		{"plain error", errors.New("disk full"), protocol.Reject{Code: "internal", Message: "disk full"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := protocol.RejectFor(tc.err)
			if *got != tc.want {
				t.Errorf("got %+v, want %+v", *got, tc.want)
			}
			// The code survives the round trip through the wire form.
			b, err := protocol.AppendMessage(nil, got)
			if err != nil {
				t.Fatal(err)
			}
			m, err := protocol.ReadMessage(bufio.NewReader(bytes.NewReader(b)))
			if err != nil {
				t.Fatal(err)
			}
			back := m.(*protocol.Reject).Err()
			if want := protocol.CodeOf(tc.err); !errors.Is(back, &protocol.Error{Code: want}) {
				t.Errorf("got %v after the round trip, want code %v", back, want)
			}
		})
	}
}

func TestGoAwayDrainTimeout(t *testing.T) {
	tests := []struct {
		name   string
		millis int64
		want   time.Duration
	}{
		{"absent", 0, 0},
		{"negative", -5000, 0},
		{"most negative", math.MinInt64, 0},
		{"one millisecond", 1, time.Millisecond},
		{"thirty seconds", 30000, 30 * time.Second},
		{"just under the cap", protocol.MaxGoAwayDrain.Milliseconds() - 1, protocol.MaxGoAwayDrain - time.Millisecond},
		{"the cap", protocol.MaxGoAwayDrain.Milliseconds(), protocol.MaxGoAwayDrain},
		{"a day", 86400000, protocol.MaxGoAwayDrain},
		// Would overflow time.Duration if multiplied out.
		{"largest", math.MaxInt64, protocol.MaxGoAwayDrain},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := &protocol.GoAway{Reason: "shutdown", DrainMillis: tc.millis}
			if got := g.DrainTimeout(); got != tc.want {
				t.Errorf("DrainTimeout() with drain_ms %d: got %v, want %v", tc.millis, got, tc.want)
			}
		})
	}
}

// An agent built before drain_ms reads a GoAway that carries it as before
// (unknown fields are ignored), and the field is left out when zero, so
// an old relay's GoAway is byte for byte what it was.
func TestGoAwayDrainCompatibility(t *testing.T) {
	b, err := protocol.AppendMessage(nil, &protocol.GoAway{Reason: "shutdown"})
	if err != nil {
		t.Fatal(err)
	}
	if want := "\x06\x15{\"reason\":\"shutdown\"}"; string(b) != want {
		t.Errorf("GoAway without a drain: got %q, want %q", b, want)
	}
	type oldGoAway struct {
		Reason  string `json:"reason"`
		Message string `json:"message,omitempty"`
	}
	js, err := json.Marshal(&protocol.GoAway{Reason: "shutdown", Message: "m", DrainMillis: 30000})
	if err != nil {
		t.Fatal(err)
	}
	var old oldGoAway
	if err := json.Unmarshal(js, &old); err != nil || old != (oldGoAway{"shutdown", "m"}) {
		t.Errorf("an older reader got %+v, %v from %s; want the reason and message", old, err, js)
	}
}
