package protocol_test

// Microbenchmarks of the wire codecs on the stream-open and control paths.
// scripts/bench/micro runs them and compares two revisions with benchstat.

import (
	"bufio"
	"bytes"
	"io"
	"testing"

	"github.com/tetherhq/tether/protocol"
)

// benchHeader is a typical stream header: the relay names the service, the
// authenticated backend and a 16-hex-digit request id.
var benchHeader = protocol.StreamHeader{Service: "postgres", Backend: "backend:billing", RequestID: "5f1c0a9e3b7d2468"}

// rewindReader serves the same bytes again and again without allocating,
// like a stream that always has the next header ready.
type rewindReader struct {
	b   []byte
	off int
}

func (r *rewindReader) Read(p []byte) (int, error) {
	if r.off == len(r.b) {
		r.off = 0
	}
	n := copy(p, r.b[r.off:])
	r.off += n
	return n, nil
}

func encodedHeader(b *testing.B, h protocol.StreamHeader) []byte {
	b.Helper()
	enc, err := h.AppendBinary(nil)
	if err != nil {
		b.Fatal(err)
	}
	return enc
}

// BenchmarkStreamHeader measures what the relay does for every stream it
// opens (write the header) and what the agent does for every stream it
// accepts (read it), through an io.Writer and io.Reader as on a real stream.
func BenchmarkStreamHeader(b *testing.B) {
	enc := encodedHeader(b, benchHeader)
	b.Run("write", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(enc)))
		for b.Loop() {
			if err := protocol.WriteStreamHeader(io.Discard, benchHeader); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("append", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(enc)))
		buf := make([]byte, 0, 512)
		for b.Loop() {
			var err error
			if buf, err = benchHeader.AppendBinary(buf[:0]); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("read", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(enc)))
		r := &rewindReader{b: enc}
		for b.Loop() {
			h, err := protocol.ReadStreamHeader(r)
			if err != nil {
				b.Fatal(err)
			}
			if h.Service != benchHeader.Service {
				b.Fatalf("read %+v", h)
			}
		}
	})
	b.Run("parse", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(enc)))
		body := enc[3:]
		for b.Loop() {
			if _, err := protocol.ParseStreamHeaderBody(body); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkReply measures the agent's answer to a stream header: the OK
// reply of every successful open, and a refusal with a message.
func BenchmarkReply(b *testing.B) {
	for _, tc := range []struct {
		name string
		rep  protocol.Reply
	}{
		{"ok", protocol.Reply{}},
		{"refusal", protocol.Reply{Code: protocol.CodeNotAllowed, Message: `service "postgres" is not in this agent's allowlist`}},
	} {
		var enc bytes.Buffer
		if err := protocol.WriteReply(&enc, tc.rep); err != nil {
			b.Fatal(err)
		}
		b.Run("write-"+tc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(enc.Len()))
			for b.Loop() {
				if err := protocol.WriteReply(io.Discard, tc.rep); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("read-"+tc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(enc.Len()))
			r := &rewindReader{b: enc.Bytes()}
			for b.Loop() {
				rep, err := protocol.ReadReply(r)
				if err != nil {
					b.Fatal(err)
				}
				if rep.Code != tc.rep.Code {
					b.Fatalf("read %+v", rep)
				}
			}
		})
	}
}

// BenchmarkControlMessage measures the control-stream codec: Ping and Pong
// go both ways every heartbeat on every agent session, Hello and Welcome
// once per session.
func BenchmarkControlMessage(b *testing.B) {
	for _, tc := range []struct {
		name string
		msg  protocol.Message
	}{
		{"ping", &protocol.Ping{Seq: 123456}},
		{"hello", &protocol.Hello{
			ProtocolVersion: protocol.Version, AgentVersion: "v1.4.2", OS: "linux", Arch: "amd64",
			Hostname: "db-gateway-01", Capabilities: []string{protocol.CapHeartbeat, protocol.CapGoAway, protocol.CapRenew},
			BootID: "9b0c6f0e2d4a8c17", Transport: "quic", TransportWhy: "configured",
		}},
		{"welcome", &protocol.Welcome{
			ProtocolVersion: protocol.Version, RelayVersion: "v1.4.2", AgentID: "k3n5q7s9u2w4y6a8",
			Tenant: "acme", SessionID: "0f1e2d3c4b5a6978", HeartbeatMillis: 15000,
			Capabilities: []string{protocol.CapHeartbeat, protocol.CapGoAway, protocol.CapRenew},
		}},
	} {
		enc, err := protocol.AppendMessage(nil, tc.msg)
		if err != nil {
			b.Fatal(err)
		}
		b.Run("write-"+tc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(enc)))
			for b.Loop() {
				if err := protocol.WriteMessage(io.Discard, tc.msg); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("read-"+tc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(enc)))
			br := bufio.NewReaderSize(&rewindReader{b: enc}, 512)
			for b.Loop() {
				m, err := protocol.ReadMessage(br)
				if err != nil {
					b.Fatal(err)
				}
				if m.Type() != tc.msg.Type() {
					b.Fatalf("read message type %d", m.Type())
				}
			}
		})
	}
}
