package test

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/transport/quic"
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
