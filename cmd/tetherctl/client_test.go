package main

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/tetherhq/tether/cmd/internal/cli"
)

// tetherctl given an address that does not answer with TLS says that
// --url must be the relay's admin listener: a server that answers in
// plain HTTP (the relay's metrics or CONNECT listener), which net/http
// reports as a scheme mismatch, and one that answers with something
// else.
func TestNotTLSPointsAtAdminListener(t *testing.T) {
	plainHTTP := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "not the admin API", http.StatusNotFound)
	}))
	defer plainHTTP.Close()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer ln.Close()
	wg.Add(1)
	go func() { // answers every connection with bytes that are neither TLS nor HTTP
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("SSH-2.0-OpenSSH_9.6\r\n"))
			c.Close()
		}
	}()

	const want = "--url (TETHER_ADMIN_URL) must be the relay's admin listener"
	for name, addr := range map[string]string{"plain HTTP": plainHTTP.Listener.Addr().String(), "not HTTP": ln.Addr().String()} {
		t.Run(name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			root := newRoot(cli.BuildInfo{Program: prog}, &stdout, &stderr, func(string) string { return "" })
			code := cli.Execute(context.Background(), root, []string{"--url", "https://" + addr, "--token", "x", "agent", "list"}, &stderr)
			if code != cli.ExitFailure || !strings.Contains(stderr.String(), want) {
				t.Errorf("exit %d, stderr %q; want exit %d and %q", code, stderr.String(), cli.ExitFailure, want)
			}
		})
	}
}
