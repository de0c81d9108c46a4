package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tetherhq/tether/agent"
)

// TestProxyCAFileNotNeededWithoutConnecting: the commands that read the
// agent's config but never dial through its proxy (status, access-log)
// work with a config whose proxy_ca_file is missing or not a file of
// certificates; status shows the running agent's problem with it.
func TestProxyCAFileNotNeededWithoutConnecting(t *testing.T) {
	dir := t.TempDir()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	if err := os.WriteFile(filepath.Join(dir, agent.LogKeyFile), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	// The agent's status listener, as a running agent serves it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	caErr := "proxy_ca_file " + filepath.Join(dir, "missing.pem") + ": no such file or directory"
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		json.NewEncoder(w).Encode(agent.Status{AgentID: "a1", Tenant: "acme", ProxyCAError: caErr})
	})}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("status listener: %v", err)
		}
	})
	bad := filepath.Join(dir, "bad.pem")
	if err := os.WriteFile(bad, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	for _, caFile := range []string{filepath.Join(dir, "missing.pem"), bad} {
		t.Run(filepath.Base(caFile), func(t *testing.T) {
			cfg := filepath.Join(dir, "agent.yaml")
			if err := os.WriteFile(cfg, fmt.Appendf(nil, "state_dir: %s\nproxy: https://proxy.corp:3128\nproxy_ca_file: %s\nstatus_listen: %s\n", dir, caFile, ln.Addr()), 0o600); err != nil {
				t.Fatal(err)
			}
			code, stdout, stderr := run(t, nil, "", "status", "--config", cfg)
			if code != 0 || !strings.Contains(stdout, "a1 (tenant acme)") {
				t.Fatalf("status: exit %d\n%s%s", code, stdout, stderr)
			}
			if !strings.Contains(stdout, "proxy CA error") || !strings.Contains(stdout, caErr) {
				t.Errorf("status does not show the agent's proxy CA error:\n%s", stdout)
			}
			for _, args := range [][]string{{"access-log", "--rotate-key"}, {"access-log", "--verify"}, {"access-log"}} {
				if code, stdout, stderr := run(t, nil, "", append(args, "--config", cfg)...); code != 0 {
					t.Errorf("%s: exit %d\n%s%s", strings.Join(args, " "), code, stdout, stderr)
				}
			}
		})
	}
}
