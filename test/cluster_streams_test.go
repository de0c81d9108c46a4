package test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/client"
)

// TestClusterForwardedStreams: streams entering relay 2 for an agent
// connected only to relay 1 are forwarded over the relay-to-relay link:
// 256 MiB each way at once through one of them arrive intact (SHA-256),
// and 1 000 of them open at once all succeed.
func TestClusterForwardedStreams(t *testing.T) {
	// Every backend connection of the test comes from 127.0.0.1: the
	// bounds per source address are lifted on the entry relay.
	c := startClusterWith(t, 2, clusterOpts{extra: []string{
		"--max-front-pending-per-address", "100000", "--max-front-pending-per-network", "100000"}})
	c.admin(t, "tenant", "add", "acme")
	key := c.admin(t, "backend", "add", "billing", "--allow", "acme")
	stateDir, id := enroll(t, c.relays[0].agentAddr, c.admin(t, "token", "create", "--tenant", "acme"))
	a := runAgent(t, stateDir, id, c.relays[0].agentAddr, agentOpts{transport: "tcp", logLevel: "info", extra: "relay_connections: 1\n",
		services: map[string]string{"echo": tcpService(t, echo), "both": tcpService(t, bothWaysService)}})
	a.waitOutput(`"relay_id":"relay-1"`, 20*time.Second)
	d := c.dialer(c.relays[1], "billing", key)
	conn := waitDial(t, d, "echo.acme.tether:7", 20*time.Second)
	conn.Close()

	t.Run("256MiBEachWay", func(t *testing.T) {
		const size = 256 << 20
		conn := waitDial(t, d, "both.acme.tether:1", 10*time.Second)
		defer conn.Close()
		start := time.Now()
		sent := make(chan string, 1)
		go func() {
			h := sha256.New()
			_, err := io.Copy(io.MultiWriter(conn, h), io.LimitReader(rand.NewChaCha8(seedFrom(21)), size))
			if err == nil {
				err = conn.(*client.Conn).CloseWrite()
			}
			if err != nil {
				sent <- "error: " + err.Error()
				return
			}
			sent <- hex.EncodeToString(h.Sum(nil))
		}()
		h := sha256.New()
		if n, err := io.Copy(h, io.LimitReader(conn, size)); err != nil || n != size {
			t.Fatalf("download: read %d of %d bytes: %v", n, size, err)
		}
		if got, want := hex.EncodeToString(h.Sum(nil)), expectedHash(size, 22); got != want {
			t.Fatalf("downloaded data has SHA-256 %s, want %s", got, want)
		}
		// Then the service says what it received.
		got, err := readLine(conn)
		if err != nil {
			t.Fatalf("read the service's hash: %v", err)
		}
		if want := <-sent; got != want {
			t.Fatalf("the service received data with SHA-256 %s, the backend sent %s", got, want)
		}
		el := time.Since(start)
		t.Logf("256 MiB each way through a forwarded stream in %v (%.0f MB/s each way)", el.Round(time.Millisecond), size/el.Seconds()/1e6)
	})

	t.Run("1000Concurrent", func(t *testing.T) {
		const n = 1000
		start := time.Now()
		conns := make([]net.Conn, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer cancel()
				conns[i], errs[i] = d.DialContext(ctx, "tcp", "echo.acme.tether:7")
			})
		}
		wg.Wait()
		opened := time.Since(start)
		defer func() {
			for _, c := range conns {
				if c != nil {
					c.Close()
				}
			}
		}()
		failed := 0
		for i, err := range errs {
			if err != nil {
				if failed < 5 {
					t.Errorf("stream %d: %v", i, err)
				}
				failed++
			}
		}
		if failed > 0 {
			t.Fatalf("%d of %d concurrent forwarded streams failed to open", failed, n)
		}
		// Every stream is open at once; each carries a line both ways.
		for i, c := range conns {
			wg.Go(func() { errs[i] = echoLine(c, fmt.Sprintf("stream %d", i)) })
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("stream %d: %v", i, err)
			}
		}
		t.Logf("%d concurrent forwarded streams between one pair of relays: all open in %v, all carried a line both ways in %v",
			n, opened.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
		// Closed, they are audited by the entry relay as carried by
		// relay 1.
		for _, c := range conns {
			c.Close()
		}
		waitCount(t, c.relays[1].proc, `"relay":"relay-1"`, n+2, 30*time.Second)
	})
}

// echoLine writes line on c and expects it back.
func echoLine(c net.Conn, line string) error {
	c.SetDeadline(time.Now().Add(30 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	b := make([]byte, len(line)+1)
	if _, err := io.ReadFull(c, b); err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if got := strings.TrimSuffix(string(b), "\n"); got != line {
		return fmt.Errorf("echo %q, want %q", got, line)
	}
	return nil
}

// bothWaysService sends 256 MiB of the pseudo-random stream of seed 22
// while it reads everything the client sends, then answers the SHA-256
// of what it read and closes.
func bothWaysService(c net.Conn) {
	var wg sync.WaitGroup
	var sendErr error
	wg.Go(func() {
		_, sendErr = io.Copy(c, io.LimitReader(rand.NewChaCha8(seedFrom(22)), 256<<20))
	})
	h := sha256.New()
	_, err := io.Copy(h, c)
	wg.Wait()
	if err != nil || sendErr != nil {
		return
	}
	io.WriteString(c, hex.EncodeToString(h.Sum(nil))+"\n")
	c.(*net.TCPConn).CloseWrite()
}
