package test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/net/proxy"

	"github.com/tetherhq/tether/internal/pgtest"
	"github.com/tetherhq/tether/relay/client"
)

// env is a relay with one tenant "acme" whose agent exposes a PostgreSQL
// server ("db"), an HTTP server ("web"), an HTTPS server ("secure") and
// test TCP services, and a backend "billing" allowed to reach acme.
type env struct {
	relay   *relayProc
	agent   *agentProc
	pg      *pgtest.Server
	dialer  *client.Dialer
	socks   *url.URL
	httpsCA *http.Transport // trusts the "secure" server
}

func newEnv(t *testing.T, transport string, pg bool, extraServices map[string]string) *env {
	t.Helper()
	e := &env{}
	e.relay = startRelay(t, relayOpts{})
	e.relay.addTenant(t, "acme")
	e.dialer = e.relay.backend(t, "billing", "acme")
	e.socks = &url.URL{Scheme: "socks5", User: url.UserPassword("billing", e.dialer.APIKey), Host: e.relay.socksAddr}

	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "web says hello to %s", r.URL.Path)
	}))
	t.Cleanup(web.Close)
	secure := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "secure says hello to %s", r.URL.Path)
	}))
	t.Cleanup(secure.Close)
	e.httpsCA = secure.Client().Transport.(*http.Transport).Clone()

	services := map[string]string{
		"web":    web.Listener.Addr().String(),
		"secure": secure.Listener.Addr().String(),
		"echo":   tcpService(t, echo),
	}
	if pg {
		e.pg = pgtest.Start(t)
		services["db"] = e.pg.Addr()
	}
	for k, v := range extraServices {
		services[k] = v
	}
	e.agent = startAgent(t, e.relay, "acme", agentOpts{transport: transport, services: services})
	return e
}

// pgConfig returns a pgx config that reaches the database through dial.
func (e *env) pgConfig(t *testing.T, dial func(ctx context.Context, network, addr string) (net.Conn, error)) *pgx.ConnConfig {
	t.Helper()
	cfg, err := pgx.ParseConfig(e.pg.DSNFor("db.acme.tether:5432"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.DialFunc = dial
	// The .tether name is resolved by the relay, not by local DNS.
	cfg.LookupFunc = func(ctx context.Context, host string) ([]string, error) { return []string{host}, nil }
	return cfg
}

func sqlRoundTrip(t *testing.T, cfg *pgx.ConnConfig, table string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("connect to PostgreSQL through the tunnel: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE TABLE "+table+" (id int PRIMARY KEY, name text NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 100; i++ {
		if _, err := tx.Exec(ctx, "INSERT INTO "+table+" VALUES ($1, $2)", i, fmt.Sprintf("row %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	var n int
	var sum int64
	if err := conn.QueryRow(ctx, "SELECT count(*), sum(id) FROM "+table).Scan(&n, &sum); err != nil {
		t.Fatal(err)
	}
	if n != 100 || sum != 5050 {
		t.Fatalf("got count %d sum %d, want 100 and 5050", n, sum)
	}
	var name string
	if err := conn.QueryRow(ctx, "SELECT name FROM "+table+" WHERE id = $1", 42).Scan(&name); err != nil {
		t.Fatal(err)
	}
	if name != "row 42" {
		t.Fatalf("got %q, want %q", name, "row 42")
	}
}

func TestSQLAndHTTPThroughEveryFrontDoor(t *testing.T) {
	for _, transport := range []string{"quic", "tcp"} {
		t.Run(transport, func(t *testing.T) {
			e := newEnv(t, transport, true, nil)

			t.Run("SQLThroughGoDialer", func(t *testing.T) {
				sqlRoundTrip(t, e.pgConfig(t, e.dialer.DialContext), "via_dialer")
			})
			t.Run("SQLThroughSOCKS5", func(t *testing.T) {
				pw, _ := e.socks.User.Password()
				d, err := proxy.SOCKS5("tcp", e.relay.socksAddr, &proxy.Auth{User: "billing", Password: pw}, proxy.Direct)
				if err != nil {
					t.Fatal(err)
				}
				sqlRoundTrip(t, e.pgConfig(t, d.(proxy.ContextDialer).DialContext), "via_socks")
			})
			t.Run("HTTPThroughCONNECT", func(t *testing.T) {
				// Go's own proxy client uses CONNECT for https URLs.
				tr := e.httpsCA.Clone()
				tr.Proxy = http.ProxyURL(&url.URL{Scheme: "http", User: url.UserPassword("billing", e.dialer.APIKey), Host: e.relay.connectAddr})
				tr.TLSClientConfig.ServerName = "example.com" // httptest's certificate names example.com
				httpGet(t, tr, "https://secure.acme.tether/connect", "secure says hello to /connect")
			})
			t.Run("HTTPThroughGoDialer", func(t *testing.T) {
				httpGet(t, &http.Transport{DialContext: e.dialer.DialContext}, "http://web.acme.tether/dialer", "web says hello to /dialer")
			})
			t.Run("HTTPThroughSOCKS5", func(t *testing.T) {
				httpGet(t, &http.Transport{Proxy: http.ProxyURL(e.socks)}, "http://web.acme.tether/socks", "web says hello to /socks")
			})
			t.Run("CurlThroughSOCKS5AndCONNECT", func(t *testing.T) {
				pw, _ := e.socks.User.Password()
				out := curl(t, "--proxy", "socks5h://billing:"+pw+"@"+e.relay.socksAddr, "http://web.acme.tether/curl-socks")
				if out != "web says hello to /curl-socks" {
					t.Fatalf("curl via SOCKS5: got %q", out)
				}
				out = curl(t, "--proxytunnel", "--proxy", "http://billing:"+pw+"@"+e.relay.connectAddr, "http://web.acme.tether/curl-connect")
				if out != "web says hello to /curl-connect" {
					t.Fatalf("curl via CONNECT: got %q", out)
				}
			})
		})
	}
}

func httpGet(t *testing.T, tr *http.Transport, u, want string) {
	t.Helper()
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 20 * time.Second}
	resp, err := c.Get(u)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || string(b) != want {
		t.Fatalf("GET %s: got %d %q, want 200 %q", u, resp.StatusCode, b, want)
	}
}

func curl(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command("curl", append([]string{"--silent", "--show-error", "--max-time", "20"}, args...)...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		t.Fatalf("curl %s: %v: %s", strings.Join(args, " "), err, errOut.String())
	}
	return out.String()
}

// sinkService reads everything, then answers the SHA-256 of what it read.
func sinkService(c net.Conn) {
	h := sha256.New()
	if _, err := io.Copy(h, c); err != nil {
		return
	}
	io.WriteString(c, hex.EncodeToString(h.Sum(nil))+"\n")
	c.(*net.TCPConn).CloseWrite()
}

// sourceService reads a size and a seed (8 bytes each), sends that many
// pseudo-random bytes, and closes.
func sourceService(c net.Conn) {
	var req [16]byte
	if _, err := io.ReadFull(c, req[:]); err != nil {
		return
	}
	n := int64(binary.BigEndian.Uint64(req[:8]))
	src := rand.NewChaCha8(seedFrom(binary.BigEndian.Uint64(req[8:])))
	io.Copy(c, io.LimitReader(src, n))
	c.(*net.TCPConn).CloseWrite()
}

func seedFrom(s uint64) (seed [32]byte) {
	binary.BigEndian.PutUint64(seed[:], s)
	return seed
}

// expectedHash is the SHA-256 of n bytes of the stream sourceService sends.
func expectedHash(n int64, seed uint64) string {
	h := sha256.New()
	io.Copy(h, io.LimitReader(rand.NewChaCha8(seedFrom(seed)), n))
	return hex.EncodeToString(h.Sum(nil))
}

func TestLargeTransfersAndConcurrency(t *testing.T) {
	const size = 256 << 20
	for _, transport := range []string{"quic", "tcp"} {
		t.Run(transport, func(t *testing.T) {
			e := newEnv(t, transport, false, map[string]string{
				"sink":   tcpService(t, sinkService),
				"source": tcpService(t, sourceService),
			})
			t.Run("Upload256MiB", func(t *testing.T) {
				c := waitDial(t, e.dialer, "sink.acme.tether:1", 10*time.Second)
				defer c.Close()
				h := sha256.New()
				src := io.TeeReader(io.LimitReader(rand.NewChaCha8(seedFrom(7)), size), h)
				if n, err := io.Copy(c, src); err != nil || n != size {
					t.Fatalf("upload: wrote %d of %d: %v", n, size, err)
				}
				if err := c.(*client.Conn).CloseWrite(); err != nil {
					t.Fatal(err)
				}
				got, err := readLine(c)
				if err != nil {
					t.Fatalf("read hash: %v", err)
				}
				if want := hex.EncodeToString(h.Sum(nil)); got != want {
					t.Fatalf("service received data with SHA-256 %s, sent %s", got, want)
				}
			})
			t.Run("Download256MiB", func(t *testing.T) {
				c := waitDial(t, e.dialer, "source.acme.tether:1", 10*time.Second)
				defer c.Close()
				var req [16]byte
				binary.BigEndian.PutUint64(req[:8], size)
				binary.BigEndian.PutUint64(req[8:], 11)
				if _, err := c.Write(req[:]); err != nil {
					t.Fatal(err)
				}
				h := sha256.New()
				n, err := io.Copy(h, c)
				if err != nil || n != size {
					t.Fatalf("download: read %d of %d: %v", n, size, err)
				}
				if got, want := hex.EncodeToString(h.Sum(nil)), expectedHash(size, 11); got != want {
					t.Fatalf("downloaded data has SHA-256 %s, want %s", got, want)
				}
			})
			t.Run("HundredConcurrentStreams", func(t *testing.T) {
				var wg sync.WaitGroup
				errs := make(chan error, 100)
				for i := range 100 {
					wg.Go(func() { errs <- echoRoundTrip(e.dialer, i, 256<<10) })
				}
				wg.Wait()
				close(errs)
				for err := range errs {
					if err != nil {
						t.Error(err)
					}
				}
			})
			t.Run("HalfClose", func(t *testing.T) {
				// The client sends, closes its write side, and then reads
				// the service's whole answer.
				c := waitDial(t, e.dialer, "sink.acme.tether:1", 10*time.Second)
				defer c.Close()
				io.WriteString(c, "half-close")
				c.(*client.Conn).CloseWrite()
				got, err := io.ReadAll(c)
				if err != nil {
					t.Fatal(err)
				}
				sum := sha256.Sum256([]byte("half-close"))
				if want := hex.EncodeToString(sum[:]) + "\n"; string(got) != want {
					t.Fatalf("got %q, want %q", got, want)
				}
			})
		})
	}
}

// echoRoundTrip sends size pseudo-random bytes through the echo service
// and checks they come back unchanged.
func echoRoundTrip(d *client.Dialer, seed, size int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", "echo.acme.tether:7")
	if err != nil {
		return fmt.Errorf("stream %d: dial: %w", seed, err)
	}
	defer c.Close()
	data := make([]byte, size)
	rand.NewChaCha8(seedFrom(uint64(seed))).Read(data)
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.(*client.Conn).CloseWrite()
		}
		werr <- err
	}()
	got, err := io.ReadAll(c)
	if err := errors.Join(err, <-werr); err != nil {
		return fmt.Errorf("stream %d: %w", seed, err)
	}
	if !bytes.Equal(got, data) {
		return fmt.Errorf("stream %d: echo differs (%d bytes back of %d)", seed, len(got), len(data))
	}
	return nil
}
