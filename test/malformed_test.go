package test

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/client"
)

// TestMalformedConnectRequests: every malformed CONNECT request, on the
// plain and the TLS door, with credentials or without, is answered 400
// with Tether-Error: bad_request and a one-line message, whether net/http
// refuses it before the relay's handler sees it (a control character or a
// port name in the target, an over-long request line, a bad Host header)
// or lets it through (user@host, an empty or over-long host, no port).
func TestMalformedConnectRequests(t *testing.T) {
	tlsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	r := startRelay(t, relayOpts{extra: []string{"--connect-tls-listen", tlsAddr}})
	r.addTenant(t, "acme")
	d := r.backend(t, "billing", "acme")
	startAgent(t, r, "acme", agentOpts{services: map[string]string{"web": tcpService(t, echo)}})
	waitDial(t, d, "web.acme.tether:80", 15*time.Second).Close()
	caPEM, err := os.ReadFile(filepath.Join(r.dataDir, "ca", "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	tlsConf, err := client.RelayTLSConfig(caPEM)
	if err != nil {
		t.Fatal(err)
	}
	auth := "Proxy-Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(d.Backend+":"+d.APIKey)) + "\r\n"

	long := strings.Repeat("a", 300) + ".acme.tether:80"
	huge := strings.Repeat("a", 30000) + ".acme.tether:80" // past net/http's limit (16 KiB and its slack of 4)
	cases := []struct {
		name, line, headers, want string
	}{
		{"NUL in the target", "CONNECT web\x00.acme.tether:80 HTTP/1.1", "", "control character"},
		{"port name", "CONNECT web.acme.tether:http HTTP/1.1", "", `port "http" is not a number`},
		{"user@host", "CONNECT billing@web.acme.tether:80 HTTP/1.1", "", "user information"},
		{"empty host", "CONNECT :80 HTTP/1.1", "", "empty host"},
		{"empty target", "CONNECT  HTTP/1.1", "", "malformed"},
		{"over-long host", "CONNECT " + long + " HTTP/1.1", "", "host of 312 bytes"},
		{"request line over the limit", "CONNECT " + huge + " HTTP/1.1", "", "longer than 16 KiB"},
		{"no port", "CONNECT web.acme.tether HTTP/1.1", "", "not host:port"},
		{"port out of range", "CONNECT web.acme.tether:99999 HTTP/1.1", "", "not a number from 0 to 65535"},
		{"a path", "CONNECT /rpc HTTP/1.1", "", "not host:port"},
		{"bad Host header", "CONNECT web.acme.tether:80 HTTP/1.1", "Host: web\x01.acme.tether:80\r\n", "malformed request"},
		{"not HTTP", "HELLO", "", "malformed request line"},
	}
	for _, door := range []struct {
		name string
		dial func() (net.Conn, error)
	}{
		{"connect", func() (net.Conn, error) { return net.DialTimeout("tcp", r.connectAddr, 5*time.Second) }},
		{"connect-tls", func() (net.Conn, error) {
			return tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", tlsAddr, tlsConf)
		}},
	} {
		for _, tc := range cases {
			for _, withAuth := range []bool{true, false} {
				t.Run(fmt.Sprintf("%s/%s/auth=%v", door.name, tc.name, withAuth), func(t *testing.T) {
					c, err := door.dial()
					if err != nil {
						t.Fatal(err)
					}
					var writer sync.WaitGroup
					defer writer.Wait()
					defer c.Close()
					c.SetDeadline(time.Now().Add(15 * time.Second))
					req := tc.line + "\r\n" + tc.headers
					if withAuth {
						req += auth
					}
					// Written in the background: the relay may answer and
					// close before reading the whole of an over-long request.
					writer.Go(func() { io.WriteString(c, req+"\r\n") })
					resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
					if err != nil {
						t.Fatalf("no answer: %v", err)
					}
					body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
					resp.Body.Close()
					msg := strings.TrimSuffix(string(body), "\n")
					if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("Tether-Error") != "bad_request" {
						t.Fatalf("got %d, Tether-Error %q (%q); want 400 bad_request", resp.StatusCode, resp.Header.Get("Tether-Error"), msg)
					}
					if !strings.HasPrefix(msg, "bad_request: ") || strings.ContainsAny(msg, "\r\n") || !strings.Contains(msg, tc.want) {
						t.Fatalf("message %q: want one line starting bad_request: and saying %q", msg, tc.want)
					}
				})
			}
		}
	}

	// Plain HTTP to the TLS door.
	if c, err := net.DialTimeout("tcp", tlsAddr, 5*time.Second); err != nil {
		t.Fatal(err)
	} else {
		c.SetDeadline(time.Now().Add(15 * time.Second))
		io.WriteString(c, "CONNECT web.acme.tether:80 HTTP/1.1\r\n"+auth+"\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
		if err != nil {
			t.Fatalf("plain HTTP to the TLS door: %v", err)
		}
		resp.Body.Close()
		c.Close()
		if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("Tether-Error") != "bad_request" {
			t.Errorf("plain HTTP to the TLS door: got %d %q, want 400 bad_request", resp.StatusCode, resp.Header.Get("Tether-Error"))
		}
	}

	// The Go Dialer reads these as its typed error.
	for _, addr := range []string{"web.acme.tether:http", "web.acme.tether:65536", ":80"} {
		if c, err := d.Dial("tcp", addr); err == nil {
			c.Close()
			t.Errorf("Dialer: dial %q succeeded", addr)
		} else if !strings.Contains(err.Error(), "bad_request") || !isBadRequest(err) {
			t.Errorf("Dialer: dial %q: got %v, want client.ErrBadRequest", addr, err)
		}
	}
	// A well-formed request on the same doors still opens a stream.
	if c, err := d.Dial("tcp", "web.acme.tether:80"); err != nil {
		t.Fatalf("well-formed request: %v", err)
	} else {
		c.Close()
	}
}

func isBadRequest(err error) bool {
	var pe *client.Error
	return errors.As(err, &pe) && pe.Code.String() == "bad_request"
}

// TestMalformedSOCKS5Requests: every malformed SOCKS5 request gets a reply
// code, never a bare close.
func TestMalformedSOCKS5Requests(t *testing.T) {
	r := startRelay(t, relayOpts{})
	r.addTenant(t, "acme")
	d := r.backend(t, "billing", "acme")
	startAgent(t, r, "acme", agentOpts{services: map[string]string{"web": tcpService(t, echo)}})
	waitDial(t, d, "web.acme.tether:80", 15*time.Second).Close()

	domain := func(host string) []byte {
		b := append([]byte{5, 1, 0, 3, byte(len(host))}, host...)
		return binary.BigEndian.AppendUint16(b, 80)
	}
	for _, tc := range []struct {
		name    string
		request []byte
		want    byte
	}{
		{"NUL in the host", domain("web\x00.acme.tether"), 0x04},
		{"port in the host", domain("web.acme.tether:80"), 0x04},
		{"user@host", domain("billing@web.acme.tether"), 0x04},
		{"over-long label", domain(strings.Repeat("a", 200) + ".acme.tether"), 0x04},
		{"not a tether address", domain("example.com"), 0x04},
		{"IPv4 address", []byte{5, 1, 0, 1, 127, 0, 0, 1, 0, 80}, 0x04},
		{"IPv6 address", append([]byte{5, 1, 0, 4}, append(net.IPv6loopback, 0, 80)...), 0x04},
		{"empty host", []byte{5, 1, 0, 3, 0, 0, 80}, 0x01},
		{"BIND", []byte{5, 2, 0, 3, 15, 'w', 'e', 'b', '.', 'a', 'c', 'm', 'e', '.', 't', 'e', 't', 'h', 'e', 'r', 0, 80}, 0x07},
		{"unknown address type", []byte{5, 1, 0, 9, 1, 2, 3, 4, 0, 80}, 0x08},
		{"request version 4", []byte{4, 1, 0, 1, 127, 0, 0, 1, 0, 80}, 0x01},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.DialTimeout("tcp", r.socksAddr, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(15 * time.Second))
			msg := []byte{5, 1, 2, 1, byte(len(d.Backend))}
			msg = append(msg, d.Backend...)
			msg = append(msg, byte(len(d.APIKey)))
			msg = append(msg, d.APIKey...)
			if _, err := c.Write(append(msg, tc.request...)); err != nil {
				t.Fatal(err)
			}
			var head [4]byte
			if _, err := io.ReadFull(c, head[:]); err != nil || head != [4]byte{5, 2, 1, 0} {
				t.Fatalf("negotiation: % x, %v", head, err)
			}
			var rep [10]byte
			if _, err := io.ReadFull(c, rep[:]); err != nil {
				t.Fatalf("no reply: %v", err)
			}
			if rep[0] != 5 || rep[1] != tc.want {
				t.Fatalf("reply % x: got code %#x, want %#x", rep, rep[1], tc.want)
			}
		})
	}
}
