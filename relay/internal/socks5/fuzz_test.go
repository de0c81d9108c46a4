package socks5

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
)

// FuzzHandshake feeds arbitrary client bytes to Handshake. It must not
// panic, must stay within its read and write bounds, must write only
// well-formed server messages, and a request it accepts must survive being
// encoded and parsed again.
func FuzzHandshake(f *testing.F) {
	f.Add(cat(greeting, goodAuth, ipv4Req))
	f.Add(cat(greeting, goodAuth, ipv6Req))
	f.Add(cat(greeting, goodAuth, svcReq, []byte("payload")))
	f.Add(cat([]byte{0x05, 0x03, 0x00, 0x01, 0x02}, authMsg("u", "p"), domainReq(0x01, "a", 0)))
	f.Add(cat(greeting, goodAuth, domainReq(0x02, "svc.acme.tether", 22)))
	f.Add(cat(greeting, goodAuth, []byte{0x05, 0x01, 0x00, 0x03, 0x00, 0x00, 0x00}))
	f.Add(cat(greeting, goodAuth, []byte{0x05, 0x01, 0x00, 0x07}))
	f.Add(cat(greeting, authMsg("billing", "wrong"), svcReq))
	f.Add([]byte{0x05, 0x00})
	f.Add([]byte{0x05, 0xFF, 0x02})
	f.Add([]byte{0x04, 0x01, 0x00, 0x50, 10, 1, 2, 3, 0x00})

	f.Fuzz(func(t *testing.T, in []byte) {
		c := newMemConn(in)
		req, err := Handshake(c, checkCreds)
		read := len(in) - c.r.Len()
		if read > maxHandshakeLen {
			t.Fatalf("read %d bytes, more than %d", read, maxHandshakeLen)
		}
		sent := c.w.Bytes()
		if len(sent) > maxHandshakeReplyLen {
			t.Fatalf("wrote %d bytes, more than %d: % x", len(sent), maxHandshakeReplyLen, sent)
		}
		if msg := checkTranscript(sent); msg != "" {
			t.Fatalf("wrote % x: %s", sent, msg)
		}
		if (err == nil) == (req == nil) {
			t.Fatalf("got request %v with error %v", req, err)
		}
		if err != nil {
			return
		}
		if !bytes.Equal(sent, successSent) {
			t.Fatalf("succeeded after writing % x, want % x", sent, successSent)
		}
		if req.Username != "billing" || req.Password != "key-123" {
			t.Fatalf("accepted credentials %q/%q", req.Username, req.Password)
		}

		// Encode what was parsed and parse it again.
		again, err := Handshake(newMemConn(cat(greeting, authMsg(req.Username, req.Password), encodeRequest(t, req))), checkCreds)
		if err != nil {
			t.Fatalf("re-parse %+v: %v", *req, err)
		}
		if *again != *req {
			t.Fatalf("re-parsed %+v, want %+v", *again, *req)
		}
	})
}

// checkTranscript reports what is wrong with bytes Handshake wrote, or ""
// if they are a method selection, then (only after selecting 0x02) an
// authentication status, then (only after success) a refusal reply, each
// step optional.
func checkTranscript(b []byte) string {
	switch {
	case len(b) == 0, bytes.Equal(b, refuseMethods):
		return ""
	case !bytes.HasPrefix(b, methodOK):
		return "bad method selection, or bytes after refusing every method"
	}
	switch b = b[len(methodOK):]; {
	case len(b) == 0, bytes.Equal(b, authFail):
		return ""
	case !bytes.HasPrefix(b, authOK):
		return "bad authentication status, or bytes after a failure"
	}
	switch b = b[len(authOK):]; {
	case len(b) == 0:
		return ""
	case len(b) != 10 || b[0] != 0x05 || b[1] == 0x00 || b[1] > 0x08 || !bytes.Equal(b[2:], []byte{0, 1, 0, 0, 0, 0, 0, 0}):
		return "bad refusal reply"
	}
	return ""
}

// encodeRequest builds the CONNECT request a client would send for req.
func encodeRequest(t *testing.T, req *Request) []byte {
	b := []byte{0x05, 0x01, 0x00, req.AddrType}
	switch req.AddrType {
	case AddrTypeDomain:
		if len(req.Host) == 0 || len(req.Host) > 255 {
			t.Fatalf("domain of %d bytes accepted", len(req.Host))
		}
		b = append(b, byte(len(req.Host)))
		b = append(b, req.Host...)
	case AddrTypeIPv4, AddrTypeIPv6:
		ip, err := netip.ParseAddr(req.Host)
		if err != nil {
			t.Fatalf("host %q of address type %#02x: %v", req.Host, req.AddrType, err)
		}
		if req.AddrType == AddrTypeIPv4 {
			if !ip.Is4() {
				t.Fatalf("host %q is not IPv4", req.Host)
			}
			b = append(b, ip.AsSlice()...)
		} else {
			if !ip.Is6() {
				t.Fatalf("host %q is not IPv6", req.Host)
			}
			a := ip.As16()
			b = append(b, a[:]...)
		}
	default:
		t.Fatalf("address type %#02x accepted", req.AddrType)
	}
	return binary.BigEndian.AppendUint16(b, req.Port)
}
