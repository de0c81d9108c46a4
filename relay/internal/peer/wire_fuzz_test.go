package peer

import (
	"bytes"
	"encoding/binary"
	"reflect"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
)

// The relay-to-relay request and answer come from another relay of the
// cluster (authenticated, but a relay of another version, or a broken
// one, may send anything): decoding arbitrary bytes never panics and reads
// no more than the message, and what decodes encodes to the same value.

func FuzzReadRequest(f *testing.F) {
	for _, q := range []request{
		{Tenant: "acme", Header: protocol.StreamHeader{Service: "db", Backend: "backend:billing", RequestID: "01HZX3K8Q9"}},
		{Tenant: "t", Header: protocol.StreamHeader{Service: "x"}},
	} {
		var b bytes.Buffer
		if err := writeRequest(&b, q, nil); err != nil {
			f.Fatal(err)
		}
		f.Add(b.Bytes())
		f.Add(append(b.Bytes(), "the client's first bytes"...))
	}
	f.Add([]byte{requestVersion, 0})                         // no tenant
	f.Add([]byte{requestVersion, 64})                        // tenant too long
	f.Add([]byte{requestVersion, 3, 'A', '/', '.', 1, 0, 0}) // tenant not a name
	f.Add([]byte{statusVersion, 1, 'a'})                     // a status request with its reserved byte set
	f.Add([]byte{statusVersion, 0, 'a'})                     // a status request, and a byte after it
	f.Add([]byte{3, 1, 'a'})                                 // another version
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		q, err := readRequest(r)
		if err != nil {
			if !reflect.DeepEqual(q, request{}) {
				t.Fatalf("got request %+v with error %v, want the zero request", q, err)
			}
			return
		}
		if q.Status {
			// Two bytes, and nothing else in it.
			if consumed := len(data) - r.Len(); consumed != 2 || !reflect.DeepEqual(q, request{Status: true}) {
				t.Fatalf("status request %+v consumed %d bytes, want 2 and nothing but Status", q, consumed)
			}
		} else {
			// The tenant, then the stream header: its version byte, its
			// length and its body.
			hdrAt := 2 + int(data[1])
			if consumed, want := len(data)-r.Len(), hdrAt+3+int(binary.BigEndian.Uint16(data[hdrAt+1:hdrAt+3])); consumed != want {
				t.Fatalf("consumed %d bytes, want the %d of the request", consumed, want)
			}
		}
		var enc bytes.Buffer
		if err := writeRequest(&enc, q, nil); err != nil {
			t.Fatalf("decoded %+v but cannot encode it: %v", q, err)
		}
		got, err := readRequest(bytes.NewReader(enc.Bytes()))
		if err != nil {
			t.Fatalf("cannot decode the re-encoding %x of %+v: %v", enc.Bytes(), q, err)
		}
		if !reflect.DeepEqual(got, q) {
			t.Fatalf("got %+v after a round trip, want %+v", got, q)
		}
	})
}

func FuzzReadAnswer(f *testing.F) {
	for _, a := range []struct {
		rep   protocol.Reply
		agent string
	}{
		{protocol.Reply{}, "k4i76sb4ilvkxdoi"},
		{protocol.Reply{Code: protocol.CodeTimeout, Message: `tenant "acme"'s agent stopped answering`}, ""},
		{protocol.Reply{Code: protocol.CodeNoAgent, Message: "日本 🙂"}, ""},
	} {
		var b writeBuf
		if err := writeAnswer(&b, a.rep, a.agent); err != nil {
			f.Fatal(err)
		}
		f.Add([]byte(b))
		f.Add(append([]byte(b), "the service's first bytes"...))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		rep, agent, err := readAnswer(bytes.NewReader(data))
		if err != nil {
			return
		}
		if agent != "" && rep.Code != protocol.CodeOK {
			t.Fatalf("a refusal (%v) names agent %q", rep.Code, agent)
		}
		var enc writeBuf
		if err := writeAnswer(&enc, rep, agent); err != nil {
			t.Fatalf("decoded %+v, %q but cannot encode it: %v", rep, agent, err)
		}
		gotRep, gotAgent, err := readAnswer(bytes.NewReader(enc))
		if err != nil {
			t.Fatalf("cannot decode the re-encoding %x: %v", []byte(enc), err)
		}
		if !reflect.DeepEqual(gotRep, rep) || gotAgent != agent {
			t.Fatalf("got %+v, %q after a round trip, want %+v, %q", gotRep, gotAgent, rep, agent)
		}
	})
}

func FuzzReadStatusAnswer(f *testing.F) {
	for _, a := range []struct {
		age  time.Duration
		beat bool
	}{{0, true}, {1500 * time.Millisecond, true}, {0, false}, {maxStatusAge, true}, {-time.Second, true}} {
		var b writeBuf
		if err := writeStatusAnswer(&b, a.age, a.beat); err != nil {
			f.Fatal(err)
		}
		f.Add([]byte(b))
		f.Add(append([]byte(b), "more"...))
	}
	var old writeBuf // an earlier relay's refusal
	if err := writeAnswer(&old, protocol.Reply{Code: protocol.CodeBadRequest, Message: "malformed relay-to-relay request: version 2"}, ""); err != nil {
		f.Fatal(err)
	}
	f.Add([]byte(old))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		age, beat, known, err := readStatusAnswer(r)
		if err != nil {
			if age != 0 || beat || known {
				t.Fatalf("got age %v, beat %v, known %v with error %v, want nothing", age, beat, known, err)
			}
			return
		}
		if !known {
			if age != 0 || beat {
				t.Fatalf("an answer that does not say gave age %v, beat %v", age, beat)
			}
			return
		}
		if age < 0 || age >= maxStatusAge || !beat && age != 0 {
			t.Fatalf("age %v, beat %v out of range", age, beat)
		}
		if consumed := len(data) - r.Len(); consumed != 4+int(binary.BigEndian.Uint16(data[2:4]))+9 {
			t.Fatalf("consumed %d bytes, want the reply and 9", consumed)
		}
		var enc writeBuf
		if err := writeStatusAnswer(&enc, age, beat); err != nil {
			t.Fatal(err)
		}
		a2, b2, k2, err := readStatusAnswer(bytes.NewReader(enc))
		if err != nil || a2 != age || b2 != beat || !k2 {
			t.Fatalf("round trip of age %v, beat %v: %v, %v, %v, %v", age, beat, a2, b2, k2, err)
		}
	})
}
