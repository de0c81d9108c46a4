package socks5

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/net/proxy"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// memConn is an io.ReadWriter that reads a fixed input and records what is
// written.
type memConn struct {
	r *bytes.Reader
	w bytes.Buffer
}

func newMemConn(in []byte) *memConn { return &memConn{r: bytes.NewReader(in)} }

func (c *memConn) Read(p []byte) (int, error)  { return c.r.Read(p) }
func (c *memConn) Write(p []byte) (int, error) { return c.w.Write(p) }

// Building blocks of client messages.
func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func authMsg(user, pass string) []byte {
	return cat([]byte{0x01, byte(len(user))}, []byte(user), []byte{byte(len(pass))}, []byte(pass))
}

func domainReq(cmd byte, host string, port uint16) []byte {
	return cat([]byte{0x05, cmd, 0x00, 0x03, byte(len(host))}, []byte(host), []byte{byte(port >> 8), byte(port)})
}

var (
	greeting      = []byte{0x05, 0x01, 0x02}
	goodAuth      = authMsg("billing", "key-123")
	methodOK      = []byte{0x05, 0x02}
	refuseMethods = []byte{0x05, 0xFF}
	authOK        = []byte{0x01, 0x00}
	authFail      = []byte{0x01, 0x01}
	ipv4Req       = []byte{0x05, 0x01, 0x00, 0x01, 10, 1, 2, 3, 0x00, 0x50}
	ipv6Req       = cat([]byte{0x05, 0x01, 0x00, 0x04}, net.ParseIP("2001:db8::1"), []byte{0x01, 0xBB})
	svcReq        = domainReq(0x01, "billing-api.acme.tether", 8443)
	successSent   = cat(methodOK, authOK)
)

func reply(code ReplyCode) []byte { return []byte{0x05, byte(code), 0x00, 0x01, 0, 0, 0, 0, 0, 0} }

func checkCreds(user, pass string) bool { return user == "billing" && pass == "key-123" }

// serveOne accepts one connection on a loopback listener and runs handle on
// it in a goroutine that the test's cleanup waits for.
func serveOne(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		handle(c)
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

type result struct {
	req *Request
	err error
}

func socksDialer(t *testing.T, addr string, auth *proxy.Auth) proxy.Dialer {
	t.Helper()
	d, err := proxy.SOCKS5("tcp", addr, auth, proxy.Direct)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestInteropSucceeded(t *testing.T) {
	tests := []struct {
		name, target string
		want         Request
	}{
		{"domain", "billing-api.acme.tether:8443", Request{Host: "billing-api.acme.tether", Port: 8443, AddrType: AddrTypeDomain}},
		{"ipv4", "10.1.2.3:80", Request{Host: "10.1.2.3", Port: 80, AddrType: AddrTypeIPv4}},
		{"ipv6", "[2001:db8::1]:443", Request{Host: "2001:db8::1", Port: 443, AddrType: AddrTypeIPv6}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := make(chan result, 1)
			addr := serveOne(t, func(c net.Conn) {
				req, err := Handshake(c, checkCreds)
				got <- result{req, err}
				if err != nil {
					return
				}
				bnd := &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 4242}
				if err := WriteReply(c, ReplySucceeded, bnd); err != nil {
					t.Errorf("WriteReply: %v", err)
					return
				}
				io.Copy(c, c) // echo until the client half-closes
			})
			d := socksDialer(t, addr, &proxy.Auth{User: "billing", Password: "key-123"})
			c, err := d.Dial("tcp", tt.target)
			if err != nil {
				t.Fatalf("Dial: %v", err)
			}
			defer c.Close()
			r := <-got
			if r.err != nil {
				t.Fatalf("Handshake: %v", r.err)
			}
			want := tt.want
			want.Username, want.Password = "billing", "key-123"
			if *r.req != want {
				t.Errorf("got request %+v, want %+v", *r.req, want)
			}

			msg := []byte("ping through the front door")
			if _, err := c.Write(msg); err != nil {
				t.Fatalf("write: %v", err)
			}
			c.(*net.TCPConn).CloseWrite()
			echo, err := io.ReadAll(c)
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			if !bytes.Equal(echo, msg) {
				t.Errorf("got echo %q, want %q", echo, msg)
			}
		})
	}
}

func TestInteropRefusals(t *testing.T) {
	for code := ReplyGeneralFailure; code <= ReplyAddrTypeNotSupported; code++ {
		t.Run(code.String(), func(t *testing.T) {
			got := make(chan result, 1)
			addr := serveOne(t, func(c net.Conn) {
				req, err := Handshake(c, checkCreds)
				got <- result{req, err}
				if err == nil {
					WriteReply(c, code, nil)
				}
			})
			d := socksDialer(t, addr, &proxy.Auth{User: "billing", Password: "key-123"})
			c, err := d.Dial("tcp", "billing-api.acme.tether:443")
			if err == nil {
				c.Close()
				t.Fatal("Dial succeeded, want an error")
			}
			// x/net reports a refusal only as text; its wording is
			// RFC 1928's, as is ReplyCode.String's.
			if !strings.Contains(err.Error(), code.String()) {
				t.Errorf("got client error %q, want it to mention %q", err, code.String())
			}
			if r := <-got; r.err != nil {
				t.Errorf("Handshake: %v", r.err)
			}
		})
	}
}

func TestInteropAuthRefused(t *testing.T) {
	tests := []struct {
		name    string
		auth    *proxy.Auth
		wantErr error
	}{
		{"wrong password", &proxy.Auth{User: "billing", Password: "wrong"}, ErrAuthFailed},
		{"unknown user", &proxy.Auth{User: "payroll", Password: "key-123"}, ErrAuthFailed},
		{"empty password", &proxy.Auth{User: "billing"}, ErrAuthFailed},
		{"no credentials", nil, ErrNoAcceptableMethod},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := make(chan result, 1)
			addr := serveOne(t, func(c net.Conn) {
				req, err := Handshake(c, checkCreds)
				got <- result{req, err}
			})
			c, err := socksDialer(t, addr, tt.auth).Dial("tcp", "billing-api.acme.tether:443")
			if err == nil {
				c.Close()
				t.Fatal("Dial succeeded, want an error")
			}
			r := <-got
			if !errors.Is(r.err, tt.wantErr) {
				t.Errorf("got Handshake error %v, want %v", r.err, tt.wantErr)
			}
			if r.req != nil {
				t.Errorf("got request %+v with an error", r.req)
			}
		})
	}
}

func TestHandshakeBytes(t *testing.T) {
	long := strings.Repeat("x", 255)
	tests := []struct {
		name     string
		in       []byte
		auth     func(user, pass string) bool // checkCreds if nil and !nilAuth
		nilAuth  bool
		wantReq  *Request
		wantErr  error
		wantSent []byte
		wantRest []byte // input left unread on success
		rejected bool   // auth was called and said no
	}{
		{
			name:     "ipv4",
			in:       cat(greeting, goodAuth, ipv4Req),
			wantReq:  &Request{Username: "billing", Password: "key-123", Host: "10.1.2.3", Port: 80, AddrType: AddrTypeIPv4},
			wantSent: successSent,
		},
		{
			name:     "ipv6",
			in:       cat(greeting, goodAuth, ipv6Req),
			wantReq:  &Request{Username: "billing", Password: "key-123", Host: "2001:db8::1", Port: 443, AddrType: AddrTypeIPv6},
			wantSent: successSent,
		},
		{
			name:     "ipv4-mapped ipv6",
			in:       cat(greeting, goodAuth, []byte{0x05, 0x01, 0x00, 0x04}, net.ParseIP("192.0.2.1"), []byte{0, 1}),
			wantReq:  &Request{Username: "billing", Password: "key-123", Host: "::ffff:192.0.2.1", Port: 1, AddrType: AddrTypeIPv6},
			wantSent: successSent,
		},
		{
			name:     "domain",
			in:       cat(greeting, goodAuth, svcReq),
			wantReq:  &Request{Username: "billing", Password: "key-123", Host: "billing-api.acme.tether", Port: 8443, AddrType: AddrTypeDomain},
			wantSent: successSent,
		},
		{
			name:     "domain bytes kept as sent",
			in:       cat(greeting, goodAuth, domainReq(0x01, "a\x00b/..\xff", 0)),
			wantReq:  &Request{Username: "billing", Password: "key-123", Host: "a\x00b/..\xff", Port: 0, AddrType: AddrTypeDomain},
			wantSent: successSent,
		},
		{
			name:     "many methods, username/password last",
			in:       cat([]byte{0x05, 0x04, 0x00, 0x01, 0x80, 0x02}, goodAuth, svcReq),
			wantReq:  &Request{Username: "billing", Password: "key-123", Host: "billing-api.acme.tether", Port: 8443, AddrType: AddrTypeDomain},
			wantSent: successSent,
		},
		{
			name:     "nonzero RSV tolerated",
			in:       cat(greeting, goodAuth, []byte{0x05, 0x01, 0xAA, 0x01, 10, 1, 2, 3, 0x00, 0x50}),
			wantReq:  &Request{Username: "billing", Password: "key-123", Host: "10.1.2.3", Port: 80, AddrType: AddrTypeIPv4},
			wantSent: successSent,
		},
		{
			name:     "every field at its maximum",
			in:       cat(append([]byte{0x05, 0xFF}, bytes.Repeat([]byte{0x02}, 255)...), authMsg(long, long), domainReq(0x01, long, 65535)),
			auth:     func(user, pass string) bool { return user == long && pass == long },
			wantReq:  &Request{Username: long, Password: long, Host: long, Port: 65535, AddrType: AddrTypeDomain},
			wantSent: successSent,
		},
		{
			name:     "pipelined payload left unread",
			in:       cat(greeting, goodAuth, svcReq, []byte("GET / HTTP/1.1\r\n\r\n")),
			wantReq:  &Request{Username: "billing", Password: "key-123", Host: "billing-api.acme.tether", Port: 8443, AddrType: AddrTypeDomain},
			wantSent: successSent,
			wantRest: []byte("GET / HTTP/1.1\r\n\r\n"),
		},
		{
			name:    "empty input",
			in:      nil,
			wantErr: io.EOF,
		},
		{
			name:    "SOCKS4 greeting",
			in:      []byte{0x04, 0x01, 0x01, 0xBB, 10, 1, 2, 3, 0x00},
			wantErr: ErrBadVersion,
		},
		{
			name:    "HTTP request",
			in:      []byte("CONNECT billing-api.acme.tether:443 HTTP/1.1\r\n\r\n"),
			wantErr: ErrBadVersion,
		},
		{
			name:     "zero methods",
			in:       cat([]byte{0x05, 0x00}, goodAuth, svcReq),
			wantErr:  ErrMalformed,
			wantSent: refuseMethods,
		},
		{
			name:     "no username/password method",
			in:       []byte{0x05, 0x02, 0x00, 0x01},
			wantErr:  ErrNoAcceptableMethod,
			wantSent: refuseMethods,
		},
		{
			name:     "bad auth version",
			in:       cat(greeting, []byte{0x05}, goodAuth[1:], svcReq),
			wantErr:  ErrBadVersion,
			wantSent: cat(methodOK, authFail),
		},
		{
			name:     "wrong password",
			in:       cat(greeting, authMsg("billing", "nope"), svcReq),
			wantErr:  ErrAuthFailed,
			wantSent: cat(methodOK, authFail),
			rejected: true,
		},
		{
			name:     "empty username",
			in:       cat(greeting, authMsg("", "key-123"), svcReq),
			auth:     func(string, string) bool { return true },
			wantErr:  ErrAuthFailed,
			wantSent: cat(methodOK, authFail),
		},
		{
			name:     "empty password",
			in:       cat(greeting, authMsg("billing", ""), svcReq),
			auth:     func(string, string) bool { return true },
			wantErr:  ErrAuthFailed,
			wantSent: cat(methodOK, authFail),
		},
		{
			name:     "nil auth refuses",
			in:       cat(greeting, goodAuth, svcReq),
			nilAuth:  true,
			wantErr:  ErrAuthFailed,
			wantSent: cat(methodOK, authFail),
		},
		{
			name:     "bad request version",
			in:       cat(greeting, goodAuth, []byte{0x04}, svcReq[1:]),
			wantErr:  ErrBadVersion,
			wantSent: cat(successSent, reply(ReplyGeneralFailure)),
		},
		{
			name:     "zero-length domain",
			in:       cat(greeting, goodAuth, []byte{0x05, 0x01, 0x00, 0x03, 0x00, 0x01, 0xBB}),
			wantErr:  ErrMalformed,
			wantSent: cat(successSent, reply(ReplyGeneralFailure)),
		},
		{
			name:     "address type 0x00",
			in:       cat(greeting, goodAuth, []byte{0x05, 0x01, 0x00, 0x00, 1, 2, 3, 4, 0, 80}),
			wantErr:  ErrAddrTypeNotSupported,
			wantSent: cat(successSent, reply(ReplyAddrTypeNotSupported)),
		},
		{
			name:     "address type 0x02",
			in:       cat(greeting, goodAuth, []byte{0x05, 0x01, 0x00, 0x02, 1, 2, 3, 4, 0, 80}),
			wantErr:  ErrAddrTypeNotSupported,
			wantSent: cat(successSent, reply(ReplyAddrTypeNotSupported)),
		},
		{
			name:     "address type 0xff",
			in:       cat(greeting, goodAuth, []byte{0x05, 0x01, 0x00, 0xFF}),
			wantErr:  ErrAddrTypeNotSupported,
			wantSent: cat(successSent, reply(ReplyAddrTypeNotSupported)),
		},
		{
			name:     "BIND",
			in:       cat(greeting, goodAuth, domainReq(0x02, "billing-api.acme.tether", 443)),
			wantErr:  ErrCommandNotSupported,
			wantSent: cat(successSent, reply(ReplyCommandNotSupported)),
		},
		{
			name:     "UDP ASSOCIATE",
			in:       cat(greeting, goodAuth, []byte{0x05, 0x03, 0x00, 0x01, 0, 0, 0, 0, 0, 0}),
			wantErr:  ErrCommandNotSupported,
			wantSent: cat(successSent, reply(ReplyCommandNotSupported)),
		},
		{
			name:     "unknown command",
			in:       cat(greeting, goodAuth, []byte{0x05, 0xF0, 0x00, 0x01, 0, 0, 0, 0, 0, 0}),
			wantErr:  ErrCommandNotSupported,
			wantSent: cat(successSent, reply(ReplyCommandNotSupported)),
		},
		{
			name:     "unknown command with unknown address type",
			in:       cat(greeting, goodAuth, []byte{0x05, 0x00, 0x00, 0x09}),
			wantErr:  ErrAddrTypeNotSupported,
			wantSent: cat(successSent, reply(ReplyAddrTypeNotSupported)),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls := 0
			inner := tt.auth
			if inner == nil {
				inner = checkCreds
			}
			auth := func(user, pass string) bool {
				calls++
				return inner(user, pass)
			}
			if tt.nilAuth {
				auth = nil
			}
			c := newMemConn(tt.in)
			req, err := Handshake(c, auth)
			if !errors.Is(err, tt.wantErr) || (err != nil) != (tt.wantErr != nil) {
				t.Errorf("got error %v, want %v", err, tt.wantErr)
			}
			switch {
			case tt.wantReq == nil && req != nil:
				t.Errorf("got request %+v, want none", *req)
			case tt.wantReq != nil && req == nil:
				t.Errorf("got no request, want %+v", *tt.wantReq)
			case tt.wantReq != nil && *req != *tt.wantReq:
				t.Errorf("got request %+v, want %+v", *req, *tt.wantReq)
			}
			if !bytes.Equal(c.w.Bytes(), tt.wantSent) {
				t.Errorf("got bytes written % x, want % x", c.w.Bytes(), tt.wantSent)
			}
			if tt.wantErr == nil {
				rest, _ := io.ReadAll(c.r)
				if !bytes.Equal(rest, tt.wantRest) {
					t.Errorf("got unread input %q, want %q", rest, tt.wantRest)
				}
			}
			wantCalls := 0
			if bytes.HasPrefix(tt.wantSent, successSent) || tt.rejected {
				wantCalls = 1
			}
			if calls != wantCalls {
				t.Errorf("got %d auth calls, want %d", calls, wantCalls)
			}
		})
	}
}

// TestHandshakeTruncated cuts valid handshakes at every offset: each cut
// must fail with io.EOF (nothing sent) or io.ErrUnexpectedEOF, write nothing
// but a prefix of the success transcript, and never yield a request.
func TestHandshakeTruncated(t *testing.T) {
	inputs := map[string][]byte{
		"ipv4":   cat(greeting, goodAuth, ipv4Req),
		"ipv6":   cat(greeting, goodAuth, ipv6Req),
		"domain": cat([]byte{0x05, 0x02, 0x00, 0x02}, goodAuth, svcReq),
	}
	for name, full := range inputs {
		for n := range len(full) {
			c := newMemConn(full[:n])
			req, err := Handshake(c, checkCreds)
			want := io.ErrUnexpectedEOF
			if n == 0 {
				want = io.EOF
			}
			if !errors.Is(err, want) {
				t.Errorf("%s cut at %d: got error %v, want %v", name, n, err, want)
			}
			if req != nil {
				t.Errorf("%s cut at %d: got request %+v, want none", name, n, *req)
			}
			if !bytes.HasPrefix(successSent, c.w.Bytes()) {
				t.Errorf("%s cut at %d: got bytes written % x, want a prefix of % x", name, n, c.w.Bytes(), successSent)
			}
		}
	}
}

// TestPipelinedPayloadTCP sends greeting, credentials, request and payload
// in one write, as optimistic clients do, over real TCP: the payload must
// still be readable from the connection after Handshake.
func TestPipelinedPayloadTCP(t *testing.T) {
	payload := []byte("GET /invoices HTTP/1.1\r\nHost: billing-api\r\n\r\n")
	got := make(chan []byte, 1)
	addr := serveOne(t, func(c net.Conn) {
		defer close(got)
		if _, err := Handshake(c, checkCreds); err != nil {
			t.Errorf("Handshake: %v", err)
			return
		}
		if err := WriteReply(c, ReplySucceeded, nil); err != nil {
			t.Errorf("WriteReply: %v", err)
			return
		}
		buf := make([]byte, len(payload))
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Errorf("read payload: %v", err)
			return
		}
		got <- buf
	})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(cat(greeting, goodAuth, svcReq, payload)); err != nil {
		t.Fatal(err)
	}
	want := cat(successSent, reply(ReplySucceeded))
	answer := make([]byte, len(want))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, answer); err != nil {
		t.Fatalf("read answer: %v", err)
	}
	if !bytes.Equal(answer, want) {
		t.Errorf("got answer % x, want % x", answer, want)
	}
	if p := <-got; !bytes.Equal(p, payload) {
		t.Errorf("got payload %q, want %q", p, payload)
	}
}

type failWriter struct{ err error }

func (w failWriter) Write([]byte) (int, error) { return 0, w.err }

func TestWriteReply(t *testing.T) {
	tests := []struct {
		name    string
		code    ReplyCode
		bnd     *net.TCPAddr
		want    []byte
		wantErr bool
	}{
		{"nil address", ReplySucceeded, nil, []byte{5, 0, 0, 1, 0, 0, 0, 0, 0, 0}, false},
		{"nil IP", ReplyNotAllowed, &net.TCPAddr{Port: 1080}, []byte{5, 2, 0, 1, 0, 0, 0, 0, 0x04, 0x38}, false},
		{"ipv4", ReplySucceeded, &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7).To4(), Port: 443}, []byte{5, 0, 0, 1, 192, 0, 2, 7, 0x01, 0xBB}, false},
		{"ipv4 in 16 bytes", ReplySucceeded, &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 65535}, []byte{5, 0, 0, 1, 192, 0, 2, 7, 0xFF, 0xFF}, false},
		{"ipv6", ReplyTTLExpired, &net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 80, Zone: "eth0"},
			cat([]byte{5, 6, 0, 4}, net.ParseIP("2001:db8::1"), []byte{0, 80}), false},
		{"unknown code", ReplyCode(0x42), nil, []byte{5, 0x42, 0, 1, 0, 0, 0, 0, 0, 0}, false},
		{"negative port", ReplySucceeded, &net.TCPAddr{Port: -1}, nil, true},
		{"port too large", ReplySucceeded, &net.TCPAddr{Port: 65536}, nil, true},
		{"bad IP length", ReplySucceeded, &net.TCPAddr{IP: net.IP{1, 2, 3}}, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			err := WriteReply(&b, tt.code, tt.bnd)
			if (err != nil) != tt.wantErr {
				t.Fatalf("got error %v, want error: %v", err, tt.wantErr)
			}
			if !bytes.Equal(b.Bytes(), tt.want) {
				t.Errorf("got % x, want % x", b.Bytes(), tt.want)
			}
		})
	}

	errBroken := errors.New("broken pipe")
	if err := WriteReply(failWriter{errBroken}, ReplySucceeded, nil); !errors.Is(err, errBroken) {
		t.Errorf("got error %v from a failing writer, want %v", err, errBroken)
	}
}

// TestHandshakeWriteErrors checks that write failures are reported, and
// that a failed refusal still carries the refusal's sentinel.
func TestHandshakeWriteErrors(t *testing.T) {
	errBroken := errors.New("broken pipe")
	tests := []struct {
		name string
		in   []byte
		want []error
	}{
		{"method selection", cat(greeting, goodAuth, svcReq), []error{errBroken}},
		{"no acceptable method", []byte{0x05, 0x01, 0x00}, []error{errBroken, ErrNoAcceptableMethod}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := struct {
				io.Reader
				io.Writer
			}{bytes.NewReader(tt.in), failWriter{errBroken}}
			req, err := Handshake(conn, checkCreds)
			if req != nil {
				t.Errorf("got request %+v, want none", *req)
			}
			for _, want := range tt.want {
				if !errors.Is(err, want) {
					t.Errorf("got error %v, want it to wrap %v", err, want)
				}
			}
		})
	}
}

func TestReplyCodeString(t *testing.T) {
	want := map[ReplyCode]string{
		ReplySucceeded:            "succeeded",
		ReplyGeneralFailure:       "general SOCKS server failure",
		ReplyNotAllowed:           "connection not allowed by ruleset",
		ReplyNetworkUnreachable:   "network unreachable",
		ReplyHostUnreachable:      "host unreachable",
		ReplyConnectionRefused:    "connection refused",
		ReplyTTLExpired:           "TTL expired",
		ReplyCommandNotSupported:  "command not supported",
		ReplyAddrTypeNotSupported: "address type not supported",
		ReplyCode(0x09):           "unknown reply code 0x09",
		ReplyCode(0xFF):           "unknown reply code 0xff",
	}
	for code, w := range want {
		if got := code.String(); got != w {
			t.Errorf("got ReplyCode(%d).String() = %q, want %q", byte(code), got, w)
		}
	}
}

func TestBounds(t *testing.T) {
	if maxHandshakeLen != 1032 {
		t.Errorf("got maxHandshakeLen %d, want 1032 (the package doc says so)", maxHandshakeLen)
	}
	if maxHandshakeReplyLen != 14 {
		t.Errorf("got maxHandshakeReplyLen %d, want 14 (Handshake's doc says so)", maxHandshakeReplyLen)
	}
}
