package test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/agent"
	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/transport/quic"
	"github.com/tetherhq/tether/relay"
)

// A relay whose handshake slots are all taken refuses a QUIC connection at
// its first packet. An agent in auto mode takes that as "busy", not as
// "UDP blocked": it does not fall back to TCP, and it connects over QUIC
// once a slot is free.
func TestBusyRelayRefusesQUICAtTheDoor(t *testing.T) {
	r := startRelay(t, relayOpts{extra: []string{"--max-handshakes", "1"}})
	r.addTenant(t, "acme")
	stateDir, id := enroll(t, r.agentAddr, r.token(t, "acme"))

	// With --max-handshakes 1 the relay runs at most 8 QUIC TLS handshakes
	// at once; 8 handshakes that stop at their client certificate hold
	// every slot.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const slots = 8
	asked, goOn := make(chan struct{}, slots), make(chan struct{})
	holder := &tls.Config{InsecureSkipVerify: true, NextProtos: []string{protocol.ALPN},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			asked <- struct{}{}
			<-goOn
			return &tls.Certificate{}, nil
		}}
	var holders sync.WaitGroup
	defer holders.Wait()
	for range slots {
		holders.Go(func() {
			if s, err := quic.Dial(ctx, r.agentAddr, holder, quic.Config(1)); err == nil {
				s.Close()
			}
		})
	}
	released := false
	release := func() {
		if !released {
			released = true
			close(goOn)
		}
	}
	defer release()
	for i := range slots {
		select {
		case <-asked:
		case <-time.After(20 * time.Second):
			t.Fatalf("holding handshake %d never reached the client certificate", i+1)
		}
	}

	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	yaml := fmt.Sprintf("relays: [%q]\nstate_dir: %q\ntransport: auto\nreconnect: {initial: 100ms, max: 500ms}\nlog: {level: debug, format: json}\nservices: {}\n", r.agentAddr, stateDir)
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	a := start(t, "tether-agent "+id, bins.agent, "run", "--config", cfg)
	a.waitOutput("the relay is busy", 20*time.Second)
	if out := a.out.String(); strings.Contains(out, "falling back") || strings.Contains(out, `"msg":"connected to relay"`) {
		t.Fatalf("the agent fell back or connected while the relay was full:\n%s", out)
	}

	release()
	a.waitOutput(`"msg":"connected to relay"`, 30*time.Second)
	out := a.out.String()
	line := out[strings.Index(out, `"msg":"connected to relay"`):]
	line = line[:strings.IndexByte(line, '\n')]
	if !strings.Contains(line, `"transport":"quic"`) {
		t.Fatalf("the agent connected, but not over QUIC: %s", line)
	}
	if strings.Contains(out, "falling back") {
		t.Fatalf("the agent fell back to TCP:\n%s", out)
	}
}

// A relay whose handshake slots are all taken lets a QUIC connection
// finish TLS (its bound on QUIC TLS handshakes has room), and the hello
// then waits for a slot. One that finds none in time is closed with the
// refusal as the close's reason: the agent reports that refusal, code and
// message, in its log and status (not the close's raw text), does not
// fall back to TCP (UDP works: the refusal came over it), and connects
// over QUIC once a slot is free.
func TestBusyRelayRefusesQUICHello(t *testing.T) {
	r := startInProcRelayWith(t, func(c *relay.Config) {
		c.MaxHandshakes = 1
		// The silent connection below holds the only slot for longer than
		// a hello waits for one (8 s).
		c.HandshakeTimeout = time.Minute
	})
	r.admin(t, "tenant", "add", "acme")
	addr := r.AgentAddr().String()
	stateDir, _ := enroll(t, addr, r.admin(t, "token", "create", "--tenant", "acme"))

	// A TCP connection that sends nothing holds the slot for its TLS
	// handshake.
	holder, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	for deadline := time.Now().Add(20 * time.Second); r.Stats().HandshakesInProgress != 1; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the silent connection holds no slot: %d handshakes in progress", r.Stats().HandshakesInProgress)
		}
	}

	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	statusAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	yaml := fmt.Sprintf("relays: [%q]\nstate_dir: %q\ntransport: auto\nrelay_connections: 1\nstatus_listen: %q\nreconnect: {initial: 100ms, max: 500ms}\nlog: {level: debug, format: json}\nservices: {}\n",
		addr, stateDir, statusAddr)
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	a := start(t, "tether-agent", bins.agent, "run", "--config", cfg)
	a.waitOutput(`"msg":"cannot connect to relay"`, 30*time.Second)
	const refusal = "relay refused this agent: unavailable: relay busy: too many agent handshakes in progress"
	out := a.out.String()
	line := out[strings.Index(out, `"msg":"cannot connect to relay"`):]
	line = line[:strings.IndexByte(line, '\n')]
	t.Logf("the agent's failed attempt: %s", line)
	if !strings.Contains(line, `"err":"`+refusal+`"`) {
		t.Fatalf("the agent's failed attempt does not report the refusal %q: %s", refusal, line)
	}
	if strings.Contains(out, "falling back") || strings.Contains(out, `"msg":"connected to relay"`) {
		t.Fatalf("the agent fell back or connected while the relay was full:\n%s", out)
	}
	// The status takes the error just after the log line.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var st agent.Status
		if err := json.Unmarshal([]byte(mustRun(t, bins.agent, "status", "--config", cfg, "-o", "json")), &st); err != nil {
			t.Fatal(err)
		}
		if len(st.Sessions) == 1 && st.Sessions[0].LastError == refusal {
			break
		}
		if len(st.Sessions) != 1 || st.Sessions[0].LastError != "" || time.Now().After(deadline) {
			t.Fatalf("status sessions %+v, want one whose last error is %q", st.Sessions, refusal)
		}
	}

	holder.Close()
	a.waitOutput(`"msg":"connected to relay"`, 30*time.Second)
	out = a.out.String()
	line = out[strings.Index(out, `"msg":"connected to relay"`):]
	line = line[:strings.IndexByte(line, '\n')]
	if !strings.Contains(line, `"transport":"quic"`) {
		t.Fatalf("the agent connected, but not over QUIC: %s", line)
	}
	if strings.Contains(out, "falling back") {
		t.Fatalf("the agent fell back to TCP:\n%s", out)
	}
}
