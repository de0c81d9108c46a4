package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/tetherhq/tether/agent"
	"github.com/tetherhq/tether/cmd/internal/cli"
	"github.com/tetherhq/tether/relay"
	"github.com/tetherhq/tether/relay/admin"
)

const demoTenant = "demo"

func demoCmd(g *globals) *cobra.Command {
	var o demoOptions
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run a relay, an agent and a private service in one process, and a request through the tunnel",
		Long: `Run the whole system in one process on a temporary data directory: a
relay, an agent of tenant "demo" enrolled with a join token, and a private
HTTP service behind the agent. It makes one request through the tunnel and
prints curl lines that do the same; Ctrl-C stops it. With --once it exits
after that request, and prints no curl lines (its doors close with it).
A front door whose port is busy moves to a free port; the other keeps
its own.`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return demo(cmd.Context(), o, g.info.Version, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	fs := cmd.Flags()
	fs.BoolVar(&o.once, "once", false, "exit after the demo's own request through the tunnel")
	fs.StringVar(&o.socks, "socks-listen", "127.0.0.1:1080", "SOCKS5 front door (another port is picked if busy)")
	fs.StringVar(&o.connect, "connect-listen", "127.0.0.1:3128", "HTTP CONNECT front door (another port is picked if busy)")
	fs.BoolVarP(&o.verbose, "verbose", "v", false, "log what relay and agent do")
	fs.BoolVar(&o.keep, "keep", false, "keep the temporary data directory")
	return cmd
}

type demoOptions struct {
	once, verbose, keep bool
	socks, connect      string
}

// demo runs the whole system in one process on a temporary data directory:
// a relay, an agent of tenant "demo" enrolled with a join token, and a
// private HTTP service behind the agent. It makes one request through the
// tunnel and prints a curl line that does the same.
func demo(ctx context.Context, o demoOptions, version string, stdout, stderr io.Writer) error {
	level := "warn"
	if o.verbose {
		level = "info"
	}
	log, err := cli.NewLogger(stderr, level, "text")
	if err != nil {
		return err
	}

	dir, err := os.MkdirTemp("", "tether-demo-")
	if err != nil {
		return err
	}
	if o.keep {
		fmt.Fprintf(stderr, "data directory: %s\n", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	relayDir := filepath.Join(dir, "relay")

	// The operator's side: a tenant, a join token, a backend credential.
	var token, apiKey string
	if token, apiKey, err = demoSetup(ctx, relayDir); err != nil {
		return err
	}

	r, err := newDemoRelay(relay.Config{
		DataDir: relayDir, AgentListen: "127.0.0.1:0", SOCKSListen: o.socks, ConnectListen: o.connect,
		Logger: log.With("component", "relay"), Version: version,
	}, stderr)
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	rctx, stopRelay := context.WithCancel(context.WithoutCancel(ctx))
	defer stopRelay()
	wg.Go(func() {
		if err := r.Run(rctx); err != nil {
			log.Error("relay stopped", "err", err)
		}
	})

	// The tenant's side: a private HTTP service and an agent that may reach it.
	svc, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		fmt.Fprintf(w, "Hello from tenant %q's private network! You asked for %s %s at %s.\n",
			demoTenant, req.Method, req.URL.Path, time.Now().Format(time.RFC3339))
	}), ReadHeaderTimeout: 10 * time.Second}
	wg.Go(func() { srv.Serve(svc) })
	defer srv.Close()

	actx, cancel := context.WithTimeout(ctx, 30*time.Second)
	st, err := agent.Enroll(actx, agent.EnrollOptions{Relay: r.AgentAddr().String(), Token: token, StateDir: filepath.Join(dir, "agent"), Version: version})
	cancel()
	if err != nil {
		return fmt.Errorf("enrol demo agent: %w", err)
	}
	// The demo's agent holds its state directory as tether-agent run
	// does: with --keep, an agent started on the directory the demo
	// printed is refused rather than run beside it.
	lock, err := agent.LockStateDir(st.Dir, "demo")
	if err != nil {
		return err
	}
	a, err := agent.New(agent.Config{
		StateDir: st.Dir,
		Services: map[string]agent.Service{"hello": {Address: svc.Addr().String()}},
		Logger:   log.With("component", "agent"), Version: version,
	})
	if err != nil {
		lock.Release()
		return err
	}
	agentCtx, stopAgent := context.WithCancel(context.WithoutCancel(ctx))
	defer stopAgent()
	wg.Go(func() {
		defer lock.Release() // once the agent has stopped
		a.Run(agentCtx)
	})

	// The SaaS backend's side: one request through the SOCKS5 front door.
	proxyURL := &url.URL{Scheme: "socks5h", User: url.UserPassword(demoTenant, apiKey), Host: r.SOCKSAddr().String()}
	body, err := demoRequest(ctx, proxyURL)
	if err != nil {
		return fmt.Errorf("request through the tunnel: %w", err)
	}
	fmt.Fprintf(stdout, "Tether demo: a relay, an agent enrolled in tenant %q, and a private HTTP service %q behind it.\n\n", demoTenant, "hello")
	fmt.Fprintf(stdout, "A request through the tunnel (backend -> SOCKS5 -> relay -> agent -> service) answered:\n  %s\n", body)
	if o.once {
		// The doors close as the demo exits: curl lines would not work.
		return nil
	}
	fmt.Fprintf(stdout, "Try it yourself:\n  curl --proxy %s http://hello.%s.tether/\n", proxyURL, demoTenant)
	fmt.Fprintf(stdout, "  curl --proxytunnel --proxy http://%s:%s@%s http://hello.%s.tether/\n", demoTenant, apiKey, r.ConnectAddr(), demoTenant)
	fmt.Fprintf(stdout, "\nPress Ctrl-C to stop.\n")
	<-ctx.Done()
	return nil
}

// demoSetup creates the data directory with a tenant, a join token and a
// backend credential.
func demoSetup(ctx context.Context, dir string) (token, apiKey string, err error) {
	a, err := admin.Open(ctx, admin.Options{DataDir: dir})
	if err != nil {
		return "", "", err
	}
	defer a.Close()
	if err := a.AddTenant(ctx, demoTenant); err != nil {
		return "", "", err
	}
	if token, _, err = a.CreateToken(ctx, demoTenant, 10*time.Minute, 1); err != nil {
		return "", "", err
	}
	apiKey, err = a.AddBackend(ctx, demoTenant, []string{demoTenant})
	return token, apiKey, err
}

// newDemoRelay starts a relay, moving a front door whose port is busy to
// a free port on the same host, and saying so on stderr; a door whose
// port is free keeps it.
func newDemoRelay(cfg relay.Config, stderr io.Writer) (*relay.Relay, error) {
	r, err := relay.New(cfg)
	if err == nil || !errors.Is(err, syscall.EADDRINUSE) {
		return r, err
	}
	moved := false
	for _, d := range []struct {
		name string
		addr *string
	}{{"SOCKS5", &cfg.SOCKSListen}, {"HTTP CONNECT", &cfg.ConnectListen}} {
		host, _, serr := net.SplitHostPort(*d.addr)
		if serr != nil || !addrInUse(*d.addr) {
			continue
		}
		fmt.Fprintf(stderr, "%s is in use: the %s door takes a free port instead\n", *d.addr, d.name)
		*d.addr, moved = net.JoinHostPort(host, "0"), true
	}
	if !moved {
		return nil, err
	}
	return relay.New(cfg)
}

// addrInUse reports whether a TCP listener cannot be opened on addr
// because another holds it.
func addrInUse(addr string) bool {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return errors.Is(err, syscall.EADDRINUSE)
	}
	l.Close()
	return false
}

// demoRequest fetches the demo service through the SOCKS5 front door,
// retrying while the agent is still connecting.
func demoRequest(ctx context.Context, proxy *url.URL) (string, error) {
	tr := &http.Transport{Proxy: http.ProxyURL(proxy)}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	deadline := time.Now().Add(20 * time.Second)
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://hello."+demoTenant+".tether/", nil)
		resp, err := c.Do(req)
		if err == nil {
			b, rerr := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if rerr != nil {
				return "", rerr
			}
			return fmt.Sprintf("HTTP %d: %s", resp.StatusCode, b), nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return "", err
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}
