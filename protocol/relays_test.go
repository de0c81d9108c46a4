package protocol_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/tetherhq/tether/protocol"
)

// TestRelaysWireFormat pins the Relays message and the fields added for
// clusters, which the relay side encodes from this description.
func TestRelaysWireFormat(t *testing.T) {
	tests := []struct {
		name string
		m    protocol.Message
		want string
	}{
		{"relays", &protocol.Relays{Relays: protocol.RelayList{{ID: "r1", Addr: "10.0.0.1:7443"}, {ID: "r2", Addr: "r2.example.com:7443", Draining: true}}},
			"\x10\x68" + `{"relays":[{"id":"r1","addr":"10.0.0.1:7443"},{"id":"r2","addr":"r2.example.com:7443","draining":true}]}`},
		{"welcome with a relay id", &protocol.Welcome{ProtocolVersion: 1, SessionID: "s", Capabilities: []string{protocol.CapRelays}, RelayID: "r1"},
			"\x02\x8f\x01" + `{"protocol_version":1,"relay_version":"","agent_id":"","tenant":"","session_id":"s","heartbeat_ms":0,"capabilities":["relays"],"relay_id":"r1"}`},
		{"goaway leaving", &protocol.GoAway{Reason: protocol.GoAwayLeaving, DrainMillis: 30000},
			"\x06\x25" + `{"reason":"leaving","drain_ms":30000}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := protocol.AppendMessage(nil, tc.m)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
	if protocol.TypeRelays != 16 || protocol.CapRelays != "relays" || protocol.GoAwayLeaving != "leaving" {
		t.Errorf("got type %d, capability %q, reason %q; want 16, relays, leaving", protocol.TypeRelays, protocol.CapRelays, protocol.GoAwayLeaving)
	}
}

// An agent built before Relays reads the message as *Unknown and a
// Welcome with a relay id as before; a relay built before it ignores the
// relays of a report.
func TestRelaysCompatibility(t *testing.T) {
	b, err := protocol.AppendMessage(nil, &protocol.Relays{Relays: protocol.RelayList{{ID: "r1", Addr: "10.0.0.1:7443"}}})
	if err != nil {
		t.Fatal(err)
	}
	type oldWelcome struct {
		SessionID string `json:"session_id"`
	}
	js, _ := json.Marshal(&protocol.Welcome{SessionID: "s", RelayID: "r1"})
	var old oldWelcome
	if err := json.Unmarshal(js, &old); err != nil || old.SessionID != "s" {
		t.Errorf("an older reader got %+v, %v from %s", old, err, js)
	}
	// What an older reader does with type 16: it knows no such type.
	u := &protocol.Unknown{MessageType: protocol.MessageType(b[0]), Payload: b[2:]}
	if again, err := protocol.AppendMessage(nil, u); err != nil || !bytes.Equal(again, b) {
		t.Errorf("re-encoding the message as unknown gave %q, %v; want %q", again, err, b)
	}
}

func TestValidateRelayAddr(t *testing.T) {
	for _, tc := range []struct {
		addr string
		ok   bool
	}{
		{"10.0.0.1:7443", true},
		{"relay-1.example.com:443", true},
		{"relay_1.internal:1", true},
		{"[2001:db8::1]:65535", true},
		{"localhost:7443", true},
		{"127.0.0.2:7443", true},
		{"r1.example.com.:7443", false}, // a trailing dot
		{"10.0.0.1", false},
		{"10.0.0.1:0", false},
		{"10.0.0.1:65536", false},
		{"10.0.0.1:07443", false},
		{"10.0.0.1:+7443", false},
		{"10.0.0.1:https", false},
		{":7443", false},
		{"0.0.0.0:7443", false},
		{"[::]:7443", false},
		{"224.0.0.1:7443", false},
		{"[fe80::1%eth0]:7443", false},
		{"-relay.example.com:7443", false},
		{"relay-.example.com:7443", false},
		{"relay..example.com:7443", false},
		{"relay example.com:7443", false},
		{"relay/x:7443", false},
		{"10.0.0.256:7443", false},
		{"1.2.3:7443", false},
		{strings.Repeat("a", 64) + ".example.com:7443", false},
		{strings.Repeat("a.", 126) + "a:7443", true},  // 253 bytes of host
		{strings.Repeat("a.", 127) + "a:7443", false}, // 255 bytes of host
		{"réseau.example.com:7443", false},
		{"relay\x00.example.com:7443", false},
	} {
		err := protocol.ValidateRelayAddr(tc.addr)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateRelayAddr(%q) = %v, want ok %v", tc.addr, err, tc.ok)
		}
	}
}

func TestValidateRelayID(t *testing.T) {
	for _, tc := range []struct {
		id string
		ok bool
	}{
		{"relay-1", true},
		{"01J9Z8_x.y", true},
		{strings.Repeat("a", protocol.MaxRelayIDLen), true},
		{strings.Repeat("a", protocol.MaxRelayIDLen+1), false},
		{"", false},
		{"relay 1", false},
		{"relay/1", false},
		{"réseau", false},
		{"a\nb", false},
	} {
		err := protocol.ValidateRelayID(tc.id)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateRelayID(%q) = %v, want ok %v", tc.id, err, tc.ok)
		}
	}
}

// A list that breaks the rules is refused whole, both when it is encoded
// and when it is decoded, with an error that matches ErrBadRequest; the
// reader stays at a frame boundary.
func TestRelaysRefused(t *testing.T) {
	many := make(protocol.RelayList, protocol.MaxRelays+1)
	for i := range many {
		many[i] = protocol.RelayInfo{ID: fmt.Sprintf("r%d", i), Addr: fmt.Sprintf("10.0.%d.%d:7443", i/250, i%250+1)}
	}
	for _, tc := range []struct {
		name string
		list protocol.RelayList
	}{
		{"too many", many},
		{"no id", protocol.RelayList{{Addr: "10.0.0.1:7443"}}},
		{"bad id", protocol.RelayList{{ID: "r 1", Addr: "10.0.0.1:7443"}}},
		{"no address", protocol.RelayList{{ID: "r1"}}},
		{"no port", protocol.RelayList{{ID: "r1", Addr: "10.0.0.1"}}},
		{"unspecified", protocol.RelayList{{ID: "r1", Addr: "0.0.0.0:7443"}}},
		{"id twice", protocol.RelayList{{ID: "r1", Addr: "10.0.0.1:7443"}, {ID: "r1", Addr: "10.0.0.2:7443"}}},
		{"address twice", protocol.RelayList{{ID: "r1", Addr: "10.0.0.1:7443"}, {ID: "r2", Addr: "10.0.0.1:7443"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := &protocol.Relays{Relays: tc.list}
			if b, err := protocol.AppendMessage(nil, m); !errors.Is(err, protocol.ErrBadRequest) {
				t.Errorf("AppendMessage got %d bytes, %v; want an error matching ErrBadRequest", len(b), err)
			}
			js, err := json.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			frame := concat([]byte{byte(protocol.TypeRelays)}, field(string(js)))
			frame = append(frame, "\x04\x09{\"seq\":7}"...) // a Ping after it
			r := bufio.NewReader(bytes.NewReader(frame))
			if got, err := protocol.ReadMessage(r); got != nil || !errors.Is(err, protocol.ErrBadRequest) {
				t.Fatalf("ReadMessage got %#v, %v; want an error matching ErrBadRequest", got, err)
			}
			if got, err := protocol.ReadMessage(r); err != nil || !reflect.DeepEqual(got, &protocol.Ping{Seq: 7}) {
				t.Errorf("the message after the refused one: got %#v, %v; want the ping", got, err)
			}
		})
	}
	if err := (&protocol.Relays{Relays: many[:protocol.MaxRelays]}).Validate(); err != nil {
		t.Errorf("a list of MaxRelays relays: %v, want it accepted", err)
	}
}

// The decoder stops at MaxRelays+1 entries: a message of tens of
// thousands of empty entries costs no more than a few hundred.
func TestRelaysDecodeBoundsAllocation(t *testing.T) {
	payload := []byte(`{"relays":[` + strings.Repeat("{},", protocol.MaxMessageSize/3-10) + `{}]}`)
	if len(payload) > protocol.MaxMessageSize {
		t.Fatalf("payload of %d bytes, want at most %d", len(payload), protocol.MaxMessageSize)
	}
	perRun := allocBytesPerRun(20, func() {
		if _, err := protocol.DecodeMessage(protocol.TypeRelays, payload); !errors.Is(err, protocol.ErrBadRequest) {
			t.Fatalf("got %v, want an error matching ErrBadRequest", err)
		}
	})
	// 21 000 decoded entries would take over 1 MiB.
	if perRun > 256<<10 {
		t.Errorf("got %d bytes allocated per refused message, want at most 256 KiB", perRun)
	}
}

func TestDecodeRelays(t *testing.T) {
	for _, tc := range []struct {
		name, payload string
		want          protocol.RelayList
	}{
		{"null list", `{"relays":null}`, nil},
		{"no list", `{}`, nil},
		{"empty list", `{"relays":[]}`, protocol.RelayList{}},
		{"unknown fields", `{"relays":[{"id":"r1","addr":"10.0.0.1:7443","zone":"eu","weight":[1]}],"epoch":3}`, protocol.RelayList{{ID: "r1", Addr: "10.0.0.1:7443"}}},
		{"keys in any case", `{"RELAYS":[{"ID":"r1","Addr":"10.0.0.1:7443","Draining":true}]}`, protocol.RelayList{{ID: "r1", Addr: "10.0.0.1:7443", Draining: true}}},
		{"the last of two lists", `{"relays":[{"id":"r1","addr":"10.0.0.1:7443"}],"relays":[{"id":"r2","addr":"10.0.0.2:7443"}]}`, protocol.RelayList{{ID: "r2", Addr: "10.0.0.2:7443"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := protocol.DecodeMessage(protocol.TypeRelays, []byte(tc.payload))
			if err != nil {
				t.Fatal(err)
			}
			if got := m.(*protocol.Relays).Relays; !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %#v, want %#v", got, tc.want)
			}
		})
	}
	for _, payload := range []string{`{"relays":{}}`, `{"relays":"r1"}`, `{"relays":[1]}`, `{"relays":[{"id":1}]}`, `{"relays":[{}]}`, `{"relays":[` + `{"id":"r","addr":"a:1"}]]}`} {
		if _, err := protocol.DecodeMessage(protocol.TypeRelays, []byte(payload)); !errors.Is(err, protocol.ErrBadRequest) {
			t.Errorf("DecodeMessage(%s) = %v, want an error matching ErrBadRequest", payload, err)
		}
	}
}

// FuzzDecodeRelays: whatever the payload, the decoder returns a list
// within the bounds (at most MaxRelays valid, distinct relays) or an
// error, and a decoded list encodes and decodes to itself.
func FuzzDecodeRelays(f *testing.F) {
	f.Add([]byte(`{"relays":[{"id":"r1","addr":"10.0.0.1:7443"},{"id":"r2","addr":"r2.example.com:443","draining":true}]}`))
	f.Add([]byte(`{"relays":[{"id":"r1","addr":"[2001:db8::1]:7443"}]}`))
	f.Add([]byte(`{"relays":[]}`))
	f.Add([]byte(`{"relays":null}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"relays":[{"id":"r1","addr":"10.0.0.1:7443"},{"id":"r1","addr":"10.0.0.2:7443"}]}`))
	f.Add([]byte(`{"relays":[{"id":"r1","addr":"0.0.0.0:7443"}]}`))
	f.Add([]byte(`{"relays":[{"id":"r1","addr":"[fe80::1%25eth0]:7443"}]}`))
	f.Add([]byte(`{"relays":[` + strings.Repeat(`{"id":"r","addr":"a:1"},`, 300) + `{}]}`))
	f.Add([]byte(`{"relays":[{"id":"r\u00e9","addr":"x.y:1"}]}`))
	f.Add([]byte(`{"relays":[{"id":"r1","addr":"a-.b:1"}],"relays":[]}`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		m, err := protocol.DecodeMessage(protocol.TypeRelays, payload)
		if err != nil {
			if m != nil {
				t.Fatalf("got %#v with error %v, want nil", m, err)
			}
			if !errors.Is(err, protocol.ErrBadRequest) {
				t.Fatalf("got error %v, want one that matches ErrBadRequest", err)
			}
			return
		}
		r, ok := m.(*protocol.Relays)
		if !ok {
			t.Fatalf("got %T, want *protocol.Relays", m)
		}
		if len(r.Relays) > protocol.MaxRelays {
			t.Fatalf("got %d relays, want at most %d", len(r.Relays), protocol.MaxRelays)
		}
		seen := map[string]bool{}
		for _, e := range r.Relays {
			if protocol.ValidateRelayID(e.ID) != nil || protocol.ValidateRelayAddr(e.Addr) != nil || seen["id "+e.ID] || seen["addr "+e.Addr] {
				t.Fatalf("got an invalid or repeated relay %+v in %+v", e, r.Relays)
			}
			seen["id "+e.ID], seen["addr "+e.Addr] = true, true
		}
		checkMessageRoundTrip(t, r)
	})
}
