// Command tether-relay runs the Tether relay and administers its data
// directory. Run "tether-relay help" for usage.
package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tetherhq/tether/cmd/internal/cli"
	"github.com/tetherhq/tether/relay"
	"github.com/tetherhq/tether/relay/admin"
)

// version is set at build time: go build -ldflags '-X main.version=1.2.3'.
var version = "dev"

const prog = "tether-relay"

const usage = `tether-relay: the Tether relay.

Usage:
  tether-relay serve   [--data-dir DIR] [--agent-listen :7443] [--socks-listen 127.0.0.1:1080]
                       [--connect-listen 127.0.0.1:3128] [--trust-domain tether.internal] [flags]
  tether-relay demo    [--once] [--socks-listen 127.0.0.1:1080]
  tether-relay tenant  add NAME | list
  tether-relay tenant  limits NAME [--max-agents N] [--max-streams N] [--open-rate R] [--open-burst N]
                       [--cidrs 10.0.0.0/8,…] | limits
  tether-relay token   create --tenant NAME [--ttl 1h] [--uses 1] | list [--tenant NAME]
  tether-relay backend add NAME --allow tenant/service,… | grant NAME GRANT… | ungrant NAME GRANT…
                       | certificate NAME --out DIR [--lifetime 2160h] | list
  tether-relay agent   list [--tenant NAME] | revoke ID [--reason TEXT]
  tether-relay audit   [--tenant T] [--agent ID] [--backend B] [--kind K] [--since T] [--until T] [--limit N]
  tether-relay ca      status | rotate [--renew-now] | renew-now | retire [--force] | export [--out FILE]
  tether-relay operator token create --name NAME [--ttl 2160h] | token list | token revoke ID
                       | certificate NAME --out DIR [--lifetime 2160h]
  tether-relay release keygen --out DIR | sign … --key KEYFILE --out DIR | publish (--signed DIR | …)
                       | list | rollout V (--percent N | --tenants a,b | --agents id,…) [--halt-at F] | status
  tether-relay version

Every command but demo and version takes --data-dir (default $TETHER_DATA_DIR,
else /var/lib/tether-relay). Admin commands work while the relay is serving.
Commands that create a secret print only the secret on stdout.
Run "tether-relay COMMAND -h" for a command's flags.
`

func main() {
	cli.QuietQUICBufferWarning()
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		cli.Fail(prog, err)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return flag.ErrHelp
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "serve":
		return serve(rest, stderr)
	case "demo":
		return demo(rest, stdout, stderr)
	case "tenant":
		return tenantCmd(rest, stdout, stderr)
	case "token":
		return tokenCmd(rest, stdout, stderr)
	case "backend":
		return backendCmd(rest, stdout, stderr)
	case "agent":
		return agentCmd(rest, stdout, stderr)
	case "audit":
		return auditCmd(rest, stdout, stderr)
	case "ca":
		return caCmd(rest, stdout, stderr)
	case "operator":
		return operatorCmd(rest, stdout, stderr)
	case "release":
		return releaseCmd(rest, stdout, stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, version)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", cmd)
}

func defaultDataDir() string {
	if d := os.Getenv("TETHER_DATA_DIR"); d != "" {
		return d
	}
	return "/var/lib/tether-relay"
}

func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(prog+" "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

func serve(args []string, stderr io.Writer) error {
	fs := newFlags("serve", stderr)
	var cfg relay.Config
	var logLevel, logFormat, transports string
	fs.StringVar(&cfg.DataDir, "data-dir", defaultDataDir(), "data directory (CA, store)")
	fs.StringVar(&cfg.AgentListen, "agent-listen", ":7443", "agent address, UDP (QUIC) and TCP (TLS+yamux) on the same port")
	fs.StringVar(&cfg.SOCKSListen, "socks-listen", "127.0.0.1:1080", `SOCKS5 front door ("off" to disable)`)
	fs.StringVar(&cfg.ConnectListen, "connect-listen", "127.0.0.1:3128", `HTTP CONNECT front door and Go Dialer endpoint ("off" to disable)`)
	fs.StringVar(&cfg.ConnectTLSListen, "connect-tls-listen", "off", "HTTP CONNECT front door over TLS, where backends may also use client certificates (tether-relay backend certificate)")
	fs.StringVar(&cfg.OIDC.Issuer, "oidc-issuer", "", "accept bearer tokens (JWT) from this OpenID Connect issuer at the CONNECT front doors")
	fs.StringVar(&cfg.OIDC.Audience, "oidc-audience", "", "audience bearer tokens must be for (required with --oidc-issuer)")
	fs.StringVar(&cfg.OIDC.JWKSURL, "oidc-jwks-url", "", "the issuer's key set (default: from its discovery document)")
	fs.StringVar(&cfg.OIDC.BackendClaim, "oidc-backend-claim", "sub", "token claim naming the backend (a registered backend; its grants apply)")
	fs.StringVar(&cfg.OIDC.TenantClaim, "oidc-tenant-claim", "tether_tenants", "token claim listing the tenants the token is for (required in every token)")
	fs.StringVar(&cfg.MetricsListen, "metrics-listen", "off", "Prometheus /metrics, /healthz and /readyz on this address (unauthenticated; names tenants)")
	fs.StringVar(&cfg.AdminListen, "admin-listen", "off", "admin API (HTTPS; operator token or certificate) on this address; see tether-relay operator")
	fs.StringVar(&cfg.AdminCertFile, "admin-cert", "", "admin listener certificate (PEM; default: one from the relay CA, see tether-relay ca export)")
	fs.StringVar(&cfg.AdminKeyFile, "admin-key", "", "admin listener key (PEM; with --admin-cert)")
	fs.DurationVar(&cfg.AdminSessionTTL, "admin-session-ttl", 12*time.Hour, "lifetime of browser sessions opened at the admin listener's /login")
	fs.StringVar(&cfg.DownloadListen, "download-listen", "off", "serve --download-dir (agent binaries, install scripts) and the CA over HTTPS on this address, for scripts/install.sh and install.ps1")
	fs.StringVar(&cfg.DownloadDir, "download-dir", "", "directory of agent binaries and install scripts (scripts/release makes one)")
	fs.StringVar(&cfg.DebugListen, "debug-listen", "off", "pprof and /debug/tether on this address (loopback only; unauthenticated)")
	fs.StringVar(&cfg.TrustDomain, "trust-domain", "tether.internal", "SPIFFE trust domain of a new CA (first start only)")
	fs.StringVar(&transports, "transports", "quic,tcp", "agent transports to serve: quic, tcp or both")
	fs.DurationVar(&cfg.AgentCertLifetime, "agent-cert-lifetime", 24*time.Hour, "validity of agent certificates; agents renew them, with a fresh key, when a third remains")
	fs.StringVar(&cfg.AuditLog, "audit-log", "", "file receiving one JSON line per audit record (default DATA-DIR/audit.log)")
	fs.DurationVar(&cfg.HeartbeatInterval, "heartbeat", 10*time.Second, "control-stream heartbeat interval")
	fs.DurationVar(&cfg.UpdateInterval, "update-interval", 5*time.Second, "how often the active rollout's release is offered to agents that have not had it")
	fs.DurationVar(&cfg.StreamOpenTimeout, "stream-open-timeout", 15*time.Second, "limit on opening a stream through an agent")
	fs.DurationVar(&cfg.IdleTimeout, "idle-timeout", time.Hour, "close tunnelled connections idle this long")
	fs.DurationVar(&cfg.DrainTimeout, "drain-timeout", 10*time.Second, "on shutdown, wait this long for tunnelled connections")
	fs.DurationVar(&cfg.ReconnectGrace, "reconnect-grace", 30*time.Second, "after start, streams to tenants whose agents were connected before wait this long for them to return")
	fs.IntVar(&cfg.MaxHandshakes, "max-handshakes", 512, "agent handshakes in progress at once; more wait up to 8s, then are turned away to retry")
	fs.IntVar(&cfg.MaxQUICTLSHandshakes, "max-quic-handshakes", 0, "QUIC TLS handshakes in progress at once; more are refused at their first packet and retry soon (0: 8 x --max-handshakes)")
	fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&logFormat, "log-format", "auto", "json, text or auto (text on a terminal)")
	if pos, err := cli.ParseInterspersed(fs, args); err != nil {
		return err
	} else if len(pos) > 0 {
		return fmt.Errorf("serve takes no arguments (got %q)", pos)
	}
	switch transports {
	case "quic,tcp", "tcp,quic":
	case "quic":
		cfg.DisableTCP = true
	case "tcp":
		cfg.DisableQUIC = true
	default:
		return fmt.Errorf("--transports %q: want quic, tcp or quic,tcp", transports)
	}
	log, err := cli.NewLogger(stderr, logLevel, logFormat)
	if err != nil {
		return err
	}
	cfg.Logger = log
	cfg.Version = version
	r, err := relay.New(cfg)
	if err != nil {
		return err
	}
	ctx, stop := cli.SignalContext()
	defer stop()
	return r.Run(ctx)
}

// withAdmin opens the data directory named by the --data-dir flag in fs.
func withAdmin(dataDir string, fn func(ctx context.Context, a *admin.Admin) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, err := admin.Open(ctx, admin.Options{DataDir: dataDir})
	if err != nil {
		return err
	}
	defer a.Close()
	return fn(ctx, a)
}

func tenantCmd(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("tenant", stderr)
	dataDir := fs.String("data-dir", defaultDataDir(), "data directory")
	output := fs.String("o", "table", "output: table or json")
	var l admin.Limits
	var cidrs string
	fs.IntVar(&l.MaxAgents, "max-agents", 0, "limits: agents enrolled and connected (0: unlimited)")
	fs.IntVar(&l.MaxStreams, "max-streams", 0, "limits: concurrent streams (0: unlimited)")
	fs.Float64Var(&l.OpenRate, "open-rate", 0, "limits: stream opens per second per backend (0: unlimited)")
	fs.IntVar(&l.OpenBurst, "open-burst", 0, "limits: burst of stream opens above the rate (default: the rate)")
	fs.StringVar(&cidrs, "cidrs", "", "limits: comma-separated networks the tenant's agents may connect from (empty: any)")
	pos, err := cli.ParseInterspersed(fs, args)
	if err != nil {
		return err
	}
	switch {
	case len(pos) == 2 && pos[0] == "limits":
		l.Tenant = pos[1]
		if cidrs != "" {
			l.CIDRs = strings.Split(cidrs, ",")
		}
		return withAdmin(*dataDir, func(ctx context.Context, a *admin.Admin) error {
			if err := a.SetLimits(ctx, l); err != nil {
				return err
			}
			fmt.Fprintf(stderr, "limits of tenant %s set; a running relay applies them within a second\n", l.Tenant)
			return nil
		})
	case len(pos) == 1 && pos[0] == "limits":
		return withAdmin(*dataDir, func(ctx context.Context, a *admin.Admin) error {
			ls, err := a.AllLimits(ctx)
			if err != nil {
				return err
			}
			return printList(stdout, *output, ls, "TENANT\tMAX AGENTS\tMAX STREAMS\tOPEN RATE\tBURST\tNETWORKS", func(l admin.Limits) string {
				return fmt.Sprintf("%s\t%s\t%s\t%s\t%d\t%s", l.Tenant, unlimited(l.MaxAgents), unlimited(l.MaxStreams),
					unlimited(l.OpenRate), l.OpenBurst, cmp.Or(strings.Join(l.CIDRs, ","), "any"))
			})
		})
	case len(pos) == 2 && pos[0] == "add":
		return withAdmin(*dataDir, func(ctx context.Context, a *admin.Admin) error {
			if err := a.AddTenant(ctx, pos[1]); err != nil {
				return err
			}
			fmt.Fprintf(stderr, "tenant %s added\n", pos[1])
			return nil
		})
	case len(pos) == 1 && pos[0] == "list":
		return withAdmin(*dataDir, func(ctx context.Context, a *admin.Admin) error {
			ts, err := a.Tenants(ctx)
			if err != nil {
				return err
			}
			return printList(stdout, *output, ts, "NAME\tCREATED", func(t admin.Tenant) string {
				return t.Name + "\t" + t.CreatedAt.Format(time.RFC3339)
			})
		})
	}
	return errors.New("usage: tether-relay tenant add NAME | tenant list | tenant limits NAME [--max-agents N] [--max-streams N] [--open-rate R] [--open-burst N] [--cidrs a,b] | tenant limits")
}

func tokenCmd(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("token", stderr)
	dataDir := fs.String("data-dir", defaultDataDir(), "data directory")
	tenant := fs.String("tenant", "", "tenant the token enrols agents into")
	ttl := fs.Duration("ttl", admin.DefaultTokenTTL, "how long the token stays valid")
	uses := fs.Int("uses", 1, "how many agents the token may enrol")
	output := fs.String("o", "table", "output of list: table or json")
	pos, err := cli.ParseInterspersed(fs, args)
	if err != nil {
		return err
	}
	switch {
	case len(pos) == 1 && pos[0] == "create":
		if *tenant == "" {
			return errors.New("token create needs --tenant")
		}
		return withAdmin(*dataDir, func(ctx context.Context, a *admin.Admin) error {
			tok, info, err := a.CreateToken(ctx, *tenant, *ttl, *uses)
			if err != nil {
				return err
			}
			fmt.Fprintln(stdout, tok)
			fmt.Fprintf(stderr, "join token %s for tenant %s: %d use(s), expires %s\n", info.ID, info.Tenant, info.MaxUses, info.ExpiresAt.Format(time.RFC3339))
			fmt.Fprintf(stderr, "enrol an agent with: tether-agent enroll --relay RELAY_HOST:7443 --token-file FILE --state-dir DIR\n")
			return nil
		})
	case len(pos) == 1 && pos[0] == "list":
		return withAdmin(*dataDir, func(ctx context.Context, a *admin.Admin) error {
			ts, err := a.Tokens(ctx, *tenant)
			if err != nil {
				return err
			}
			return printList(stdout, *output, ts, "ID\tTENANT\tUSES\tEXPIRES", func(t admin.TokenInfo) string {
				return fmt.Sprintf("%s\t%s\t%d/%d\t%s", t.ID, t.Tenant, t.Uses, t.MaxUses, t.ExpiresAt.Format(time.RFC3339))
			})
		})
	}
	return errors.New("usage: tether-relay token create --tenant NAME [--ttl 1h] [--uses 1] | token list [--tenant NAME]")
}

func backendCmd(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("backend", stderr)
	dataDir := fs.String("data-dir", defaultDataDir(), "data directory")
	allow := fs.String("allow", "", `add: comma-separated grants, each tenant/service, tenant (all its services) or a pattern with "*" ("acme/postgres,globex,*/metrics")`)
	tenants := fs.String("tenants", "", `add: comma-separated tenants the backend may reach, all their services ("*" for every tenant); same as --allow with tenant names`)
	out := fs.String("out", "", "certificate: directory to write backend.crt, backend.key and ca.crt to")
	lifetime := fs.Duration("lifetime", 90*24*time.Hour, "certificate: validity of the backend certificate")
	output := fs.String("o", "table", "output of list: table or json")
	pos, err := cli.ParseInterspersed(fs, args)
	if err != nil {
		return err
	}
	const usage = "usage: tether-relay backend add NAME --allow tenant/service,… | backend grant NAME GRANT… | backend ungrant NAME GRANT… | backend certificate NAME --out DIR | backend list"
	switch {
	case len(pos) == 2 && pos[0] == "add":
		var grants []string
		for _, list := range []string{*allow, *tenants} {
			if list != "" {
				grants = append(grants, strings.Split(list, ",")...)
			}
		}
		if len(grants) == 0 {
			return errors.New(`backend add needs --allow tenant/service,… (or --tenants a,b, or "*")`)
		}
		return withAdmin(*dataDir, func(ctx context.Context, a *admin.Admin) error {
			key, err := a.AddBackend(ctx, pos[1], grants)
			if err != nil {
				return err
			}
			fmt.Fprintln(stdout, key)
			fmt.Fprintf(stderr, "backend %s added; its API key (above) is shown only once\n", pos[1])
			return nil
		})
	case len(pos) >= 3 && (pos[0] == "grant" || pos[0] == "ungrant"):
		return withAdmin(*dataDir, func(ctx context.Context, a *admin.Admin) error {
			if pos[0] == "grant" {
				return a.Grant(ctx, pos[1], pos[2:])
			}
			return a.Ungrant(ctx, pos[1], pos[2:])
		})
	case len(pos) == 2 && (pos[0] == "certificate" || pos[0] == "cert"):
		if *out == "" {
			return errors.New("backend certificate needs --out DIR")
		}
		return withAdmin(*dataDir, func(ctx context.Context, a *admin.Admin) error {
			c, err := a.IssueBackendCertificate(ctx, pos[1], *lifetime)
			if err != nil {
				return err
			}
			if err := c.WriteFiles(*out); err != nil {
				return err
			}
			fmt.Fprintf(stderr, "wrote %s: backend.crt and backend.key (identity %s, valid until %s) and ca.crt\n",
				*out, c.Identity, c.NotAfter.UTC().Format(time.RFC3339))
			return nil
		})
	case len(pos) == 1 && pos[0] == "list":
		return withAdmin(*dataDir, func(ctx context.Context, a *admin.Admin) error {
			bs, err := a.Backends(ctx)
			if err != nil {
				return err
			}
			return printList(stdout, *output, bs, "NAME\tGRANTS\tCREATED", func(b admin.BackendInfo) string {
				gs := make([]string, len(b.Grants))
				for i, g := range b.Grants {
					gs[i] = g.String()
				}
				return b.Name + "\t" + dash(strings.Join(gs, ",")) + "\t" + b.CreatedAt.Format(time.RFC3339)
			})
		})
	}
	return errors.New(usage)
}

func agentCmd(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("agent", stderr)
	dataDir := fs.String("data-dir", defaultDataDir(), "data directory")
	tenant := fs.String("tenant", "", "only this tenant's agents")
	reason := fs.String("reason", "", "revoke: why (kept in the audit trail)")
	output := fs.String("o", "table", "output: table or json")
	pos, err := cli.ParseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) == 2 && pos[0] == "revoke" {
		return withAdmin(*dataDir, func(ctx context.Context, a *admin.Admin) error {
			ai, err := a.RevokeAgent(ctx, pos[1], *reason)
			if err != nil {
				return err
			}
			fmt.Fprintf(stderr, "agent %s of tenant %s revoked at %s; a running relay closes its connections within a second or two\n",
				ai.ID, ai.Tenant, ai.RevokedAt.Format(time.RFC3339))
			return nil
		})
	}
	if len(pos) != 1 || pos[0] != "list" {
		return errors.New("usage: tether-relay agent list [--tenant NAME] | agent revoke ID [--reason TEXT]")
	}
	return withAdmin(*dataDir, func(ctx context.Context, a *admin.Admin) error {
		as, err := a.Agents(ctx, *tenant)
		if err != nil {
			return err
		}
		return printList(stdout, *output, as, "ID\tTENANT\tHOSTNAME\tENROLLED\tCERT EXPIRES\tLAST SEEN\tREVOKED", func(x admin.AgentInfo) string {
			revoked, seen := "-", "never"
			if x.RevokedAt != nil {
				revoked = x.RevokedAt.Format(time.RFC3339)
			}
			if x.LastSeen != nil {
				seen = x.LastSeen.Format(time.RFC3339)
			}
			return strings.Join([]string{x.ID, x.Tenant, x.Hostname, x.EnrolledAt.Format(time.RFC3339), x.CertNotAfter.Format(time.RFC3339), seen, revoked}, "\t")
		})
	})
}

func auditCmd(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("audit", stderr)
	dataDir := fs.String("data-dir", defaultDataDir(), "data directory")
	var f admin.AuditFilter
	var since, until string
	fs.StringVar(&f.Tenant, "tenant", "", "only this tenant")
	fs.StringVar(&f.Agent, "agent", "", "only this agent")
	fs.StringVar(&f.Backend, "backend", "", "only this backend")
	fs.StringVar(&f.Kind, "kind", "", `only this kind (e.g. stream, agent.revoke), or a prefix ending in "." (agent.)`)
	fs.StringVar(&since, "since", "", "from this time (RFC 3339) or this long ago (e.g. 2h)")
	fs.StringVar(&until, "until", "", "before this time (RFC 3339) or this long ago")
	fs.IntVar(&f.Limit, "limit", 1000, "at most this many records (the newest)")
	output := fs.String("o", "table", "output: table or json (one object per line)")
	pos, err := cli.ParseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("audit takes no arguments (got %q)", pos)
	}
	now := time.Now()
	if f.Since, err = parseWhen(since, now); err != nil {
		return fmt.Errorf("--since: %w", err)
	}
	if f.Until, err = parseWhen(until, now); err != nil {
		return fmt.Errorf("--until: %w", err)
	}
	f.NewestFirst = true
	return withAdmin(*dataDir, func(ctx context.Context, a *admin.Admin) error {
		recs, err := a.Audit(ctx, f)
		if err != nil {
			return err
		}
		slices.Reverse(recs) // oldest first, like a log
		switch *output {
		case "json":
			enc := json.NewEncoder(stdout)
			for _, r := range recs {
				if err := enc.Encode(r); err != nil {
					return err
				}
			}
			return nil
		case "table":
			tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "TIME\tKIND\tOUTCOME\tTENANT\tAGENT\tBACKEND\tDETAIL")
			for _, r := range recs {
				detail, _ := json.Marshal(r.Detail)
				if r.Detail == nil {
					detail = []byte("-")
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.At.Format("2006-01-02T15:04:05.000Z07:00"), r.Kind, r.Outcome,
					dash(r.Tenant), dash(r.Agent), dash(r.Backend), detail)
			}
			return tw.Flush()
		}
		return fmt.Errorf("output %q: want table or json", *output)
	})
}

func caCmd(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("ca", stderr)
	dataDir := fs.String("data-dir", defaultDataDir(), "data directory")
	renewNow := fs.Bool("renew-now", false, "rotate: ask connected agents to renew at once instead of at their next scheduled renewal")
	force := fs.Bool("force", false, "retire: even if agents still hold certificates from the old root (they will have to enrol again)")
	output := fs.String("o", "table", "output: table or json")
	out := fs.String("out", "", "export: file to write the CA bundle to (default: standard output)")
	pos, err := cli.ParseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("usage: tether-relay ca status | ca rotate [--renew-now] | ca renew-now | ca retire [--force] | ca export [--out FILE]")
	}
	show := func(st admin.CAStatus) error {
		if *output == "json" {
			return printJSON(stdout, st)
		}
		return printCAStatus(stdout, st)
	}
	switch pos[0] {
	case "export":
		return withAdmin(*dataDir, func(ctx context.Context, a *admin.Admin) error { return exportCA(a, *out, stdout, stderr) })
	case "status":
		return withAdmin(*dataDir, func(ctx context.Context, a *admin.Admin) error {
			st, err := a.CAStatus(ctx)
			if err != nil {
				return err
			}
			return show(st)
		})
	case "rotate":
		return withAdmin(*dataDir, func(ctx context.Context, a *admin.Admin) error {
			st, err := a.RotateCA(ctx, *renewNow)
			if err != nil {
				return err
			}
			newRoot := st.Roots[len(st.Roots)-1]
			fmt.Fprintf(stderr, "CA root %d (%s) added; a running relay issues agent certificates from it within a second and trusts both roots until tether-relay ca retire\n",
				newRoot.Generation, newRoot.Fingerprint)
			if *renewNow {
				fmt.Fprintln(stderr, "connected agents are asked to renew now; the others move at their next renewal")
			} else {
				fmt.Fprintln(stderr, "agents move to it at their next renewal (tether-relay ca renew-now asks connected agents to renew at once)")
			}
			return show(st)
		})
	case "renew-now":
		return withAdmin(*dataDir, func(ctx context.Context, a *admin.Admin) error {
			st, err := a.RenewNowCA(ctx)
			if err != nil {
				return err
			}
			fmt.Fprintln(stderr, "a running relay asks its connected agents on the old root to renew within a second, and others as soon as they connect")
			return show(st)
		})
	case "retire":
		return withAdmin(*dataDir, func(ctx context.Context, a *admin.Admin) error {
			res, err := a.RetireCA(ctx, *force)
			if err != nil {
				return err
			}
			if *output == "json" {
				return printJSON(stdout, res)
			}
			fmt.Fprintf(stderr, "CA root %d (%s) retired; a running relay stops trusting it within a second\n", res.Retired.Generation, res.Retired.Fingerprint)
			for _, x := range res.Stranded {
				fmt.Fprintf(stderr, "agent %s of tenant %s (%s) still held a certificate from it: enrol it again\n", x.ID, x.Tenant, x.Hostname)
			}
			if n := res.Retired.Agents - len(res.Stranded); n > 0 {
				fmt.Fprintf(stderr, "and %d more agents must enrol again\n", n)
			}
			for _, t := range res.Tokens {
				fmt.Fprintf(stderr, "join token %s of tenant %s pinned it and no longer works: create a new one\n", t.ID, t.Tenant)
			}
			return nil
		})
	}
	return errors.New("usage: tether-relay ca status | ca rotate [--renew-now] | ca renew-now | ca retire [--force] | ca export [--out FILE]")
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func printCAStatus(w io.Writer, st admin.CAStatus) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ROOT\tSTATE\tFINGERPRINT\tADDED\tNOT AFTER\tAGENTS\tTOKENS")
	for _, r := range st.Roots {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%d\n", r.Generation, strings.Join(r.Roles, ","), r.Fingerprint,
			r.AddedAt.Format(time.RFC3339), r.NotAfter.Format(time.RFC3339), r.Agents, r.Tokens)
	}
	for _, r := range st.Retired {
		fmt.Fprintf(tw, "%d\tretired %s\t%s\t%s\t%s\t%d\t%d\n", r.Generation, r.RetiredAt.Format(time.RFC3339), r.Fingerprint,
			r.AddedAt.Format(time.RFC3339), r.NotAfter.Format(time.RFC3339), r.Agents, r.Tokens)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	switch {
	case st.Rotating && st.RenewNow:
		fmt.Fprintln(w, "rotation in progress: agents on the old root are asked to renew now; retire it with tether-relay ca retire once AGENTS is 0")
	case st.Rotating:
		fmt.Fprintln(w, "rotation in progress: agents move to the new root at their next renewal; retire the old one with tether-relay ca retire once AGENTS is 0")
	}
	return nil
}

// parseWhen parses an RFC 3339 time or a duration before now; "" is zero.
func parseWhen(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is neither an RFC 3339 time nor a duration such as 2h", s)
	}
	return t, nil
}

func dash(s string) string { return cmp.Or(s, "-") }

func unlimited[T int | float64](v T) string {
	if v == 0 {
		return "unlimited"
	}
	return fmt.Sprint(v)
}

func printList[T any](w io.Writer, format string, items []T, header string, row func(T) string) error {
	switch format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if items == nil {
			items = []T{}
		}
		return enc.Encode(items)
	case "table":
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, header)
		for _, it := range items {
			fmt.Fprintln(tw, row(it))
		}
		return tw.Flush()
	}
	return fmt.Errorf("output %q: want table or json", format)
}
