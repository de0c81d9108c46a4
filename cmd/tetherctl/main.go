// Command tetherctl administers a Tether relay through its admin API
// (tether-relay serve --admin-listen). Run "tetherctl help" for usage.
package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tetherhq/tether/cmd/internal/cli"
)

// version is set at build time: go build -ldflags '-X main.version=1.2.3'.
var version = "dev"

const prog = "tetherctl"

const usage = `tetherctl: administer a Tether relay through its admin API, and forward
local ports to tenant services through its front door.

Usage:
  tetherctl agents   [--tenant T] [--state up|degraded|down|revoked] [--unhealthy]
  tetherctl agent    ID
  tetherctl revoke   AGENT [--reason TEXT]
  tetherctl drain    AGENT [--message TEXT]
  tetherctl tenants
  tetherctl tenant   add NAME | show NAME
  tetherctl limits   TENANT [--max-agents N] [--max-streams N] [--open-rate R] [--open-burst N] [--cidrs a,b]
  tetherctl token    create --tenant T [--uses 1] [--ttl 1h] | list [--tenant T] | revoke ID
  tetherctl backends
  tetherctl backend  add NAME --allow tenant/service,… | grant NAME GRANT… | ungrant NAME GRANT… | remove NAME
  tetherctl audit    [--tenant T] [--agent ID] [--backend B] [--kind K] [--since 2h] [--until T] [--limit 100] [--cursor C]
  tetherctl release  list | rollout VERSION (--percent N | --tenants a,b | --agents id,…) [--halt-at F] [--batch N]
                     | status [--version V]
  tetherctl whoami
  tetherctl version
  tetherctl forward  TARGET --listen [HOST:]PORT | --map [HOST:]PORT=TARGET   (tetherctl forward -h)

Connection (flags, else environment):
  --url URL          TETHER_ADMIN_URL         the admin API, e.g. https://relay.example:7444
  --token TOKEN      TETHER_ADMIN_TOKEN       operator token (tether-relay operator token create)
  --token-file FILE  TETHER_ADMIN_TOKEN_FILE  file holding the operator token
  --ca FILE          TETHER_ADMIN_CA          CA to verify the relay with (tether-relay ca export)
  --cert, --key FILE TETHER_ADMIN_CERT/_KEY   operator client certificate (tether-relay operator certificate)
Output: -o table (default) or -o json (the API's JSON).
`

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		cli.Fail(prog, err)
	}
}

// opts are every command's flags.
type opts struct {
	conn                                            clientConfig
	output                                          string
	tenant, state, reason, message, allow, cidrs    string
	agent, backend, kind, since, until, cursor, ttl string
	unhealthy                                       bool
	uses, limit, maxAgents, maxStreams, openBurst   int
	openRate, haltAt                                float64
	percent, batch                                  int
	tenants, agents, version                        string
	set                                             map[string]bool // limit flags given
}

func env(k string) string { return os.Getenv(k) }

func run(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return flag.ErrHelp
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	case "version", "--version":
		fmt.Fprintln(stdout, version)
		return nil
	case "forward":
		return forward(rest, stderr)
	}
	var o opts
	fs := flag.NewFlagSet(prog+" "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.conn.url, "url", env("TETHER_ADMIN_URL"), "admin API URL")
	fs.StringVar(&o.conn.token, "token", env("TETHER_ADMIN_TOKEN"), "operator token")
	fs.StringVar(&o.conn.tokenFile, "token-file", env("TETHER_ADMIN_TOKEN_FILE"), "file holding the operator token")
	fs.StringVar(&o.conn.ca, "ca", env("TETHER_ADMIN_CA"), "CA certificate(s) to verify the relay with (PEM)")
	fs.StringVar(&o.conn.cert, "cert", env("TETHER_ADMIN_CERT"), "operator client certificate (PEM)")
	fs.StringVar(&o.conn.key, "key", env("TETHER_ADMIN_KEY"), "operator client key (PEM)")
	fs.DurationVar(&o.conn.timeout, "timeout", 30*time.Second, "limit on each API call")
	fs.StringVar(&o.output, "o", "table", "output: table or json")
	fs.StringVar(&o.tenant, "tenant", "", "tenant")
	fs.StringVar(&o.state, "state", "", "agents: only this state (up, degraded, down, revoked)")
	fs.BoolVar(&o.unhealthy, "unhealthy", false, "agents: only down and degraded agents")
	fs.StringVar(&o.reason, "reason", "", "revoke: why (kept in the audit trail)")
	fs.StringVar(&o.message, "message", "", "drain: message for the agent's log")
	fs.StringVar(&o.allow, "allow", "", "backend add: comma-separated grants (tenant/service, tenant, patterns with *)")
	fs.StringVar(&o.ttl, "ttl", "", "token create: how long the token stays valid (default 1h)")
	fs.IntVar(&o.uses, "uses", 1, "token create: how many agents the token may enrol")
	fs.StringVar(&o.agent, "agent", "", "audit: only this agent")
	fs.StringVar(&o.backend, "backend", "", "audit: only this backend")
	fs.StringVar(&o.kind, "kind", "", `audit: only this kind, or a prefix ending in "."`)
	fs.StringVar(&o.since, "since", "", "audit: from this time (RFC 3339) or this long ago (2h)")
	fs.StringVar(&o.until, "until", "", "audit: before this time or this long ago")
	fs.IntVar(&o.limit, "limit", 0, "audit: records per page (default 100, at most 1000)")
	fs.StringVar(&o.cursor, "cursor", "", "audit: the next page (printed after a full page)")
	fs.IntVar(&o.maxAgents, "max-agents", 0, "limits: agents (0: unlimited)")
	fs.IntVar(&o.maxStreams, "max-streams", 0, "limits: concurrent streams (0: unlimited)")
	fs.Float64Var(&o.openRate, "open-rate", 0, "limits: stream opens per second per backend (0: unlimited)")
	fs.IntVar(&o.openBurst, "open-burst", 0, "limits: burst above the rate")
	fs.StringVar(&o.cidrs, "cidrs", "", "limits: networks the tenant's agents may connect from (empty: any)")
	fs.IntVar(&o.percent, "percent", 0, "release rollout: this share of all agents (1-100)")
	fs.StringVar(&o.tenants, "tenants", "", "release rollout: the agents of these tenants (comma-separated)")
	fs.StringVar(&o.agents, "agents", "", "release rollout: these agents (comma-separated ids)")
	fs.Float64Var(&o.haltAt, "halt-at", 0, "release rollout: halt when this fraction of the agents offered it fail (0: never)")
	fs.IntVar(&o.batch, "batch", 0, "release rollout: agents updating at once (0: no limit)")
	fs.StringVar(&o.version, "version", "", "release status: only this version")
	pos, err := cli.ParseInterspersed(fs, rest)
	if err != nil {
		return err
	}
	o.set = map[string]bool{}
	fs.Visit(func(f *flag.Flag) { o.set[f.Name] = true })
	if o.output != "table" && o.output != "json" {
		return fmt.Errorf("-o %q: want table or json", o.output)
	}
	c, err := newClient(o.conn)
	if err != nil {
		return err
	}
	ctx, stop := cli.SignalContext()
	defer stop()
	x := &ctl{c: c, o: o, out: stdout, errOut: stderr}
	return x.dispatch(ctx, cmd, pos)
}

type ctl struct {
	c           *client
	o           opts
	out, errOut io.Writer
}

func (x *ctl) dispatch(ctx context.Context, cmd string, pos []string) error {
	n := len(pos)
	sub := ""
	if n > 0 {
		sub = pos[0]
	}
	switch {
	case cmd == "agents" && n == 0:
		return x.agents(ctx)
	case cmd == "agent" && n == 1:
		return x.agentShow(ctx, pos[0])
	case cmd == "revoke" && n == 1:
		return x.show(ctx, "POST", "/api/v1/agents/"+url.PathEscape(pos[0])+"/revoke", nil, map[string]string{"reason": x.o.reason}, func(raw json.RawMessage) error {
			var a struct {
				ID, Tenant string
				RevokedAt  time.Time `json:"revoked_at"`
			}
			json.Unmarshal(raw, &a)
			fmt.Fprintf(x.errOut, "agent %s of tenant %s revoked at %s; the relay closes its connections within a second or two\n", a.ID, a.Tenant, a.RevokedAt.Format(time.RFC3339))
			return nil
		})
	case cmd == "drain" && n == 1:
		return x.show(ctx, "POST", "/api/v1/agents/"+url.PathEscape(pos[0])+"/drain", nil, map[string]string{"message": x.o.message}, func(raw json.RawMessage) error {
			var d struct{ Sessions int }
			json.Unmarshal(raw, &d)
			fmt.Fprintf(x.errOut, "agent %s: %d session(s) told to drain; it reconnects and streams in flight continue\n", pos[0], d.Sessions)
			return nil
		})
	case cmd == "tenants" && n == 0:
		return x.tenants(ctx)
	case cmd == "tenant" && n == 2 && sub == "add":
		return x.show(ctx, "POST", "/api/v1/tenants", nil, map[string]string{"name": pos[1]}, func(json.RawMessage) error {
			fmt.Fprintf(x.errOut, "tenant %s added\n", pos[1])
			return nil
		})
	case cmd == "tenant" && n == 2 && sub == "show":
		return x.show(ctx, "GET", "/api/v1/tenants/"+url.PathEscape(pos[1]), nil, nil, func(raw json.RawMessage) error {
			var t tenantSummary
			if err := json.Unmarshal(raw, &t); err != nil {
				return err
			}
			return x.tenantTable([]tenantSummary{t})
		})
	case cmd == "limits" && n == 1:
		return x.limits(ctx, pos[0])
	case cmd == "token" && n == 1 && sub == "create":
		return x.tokenCreate(ctx)
	case (cmd == "token" && n == 1 && sub == "list") || (cmd == "tokens" && n == 0):
		return x.tokens(ctx)
	case cmd == "token" && n == 2 && sub == "revoke":
		return x.show(ctx, "DELETE", "/api/v1/tokens/"+url.PathEscape(pos[1]), nil, nil, func(json.RawMessage) error {
			fmt.Fprintf(x.errOut, "join token %s revoked\n", pos[1])
			return nil
		})
	case cmd == "backends" && n == 0:
		return x.backends(ctx)
	case cmd == "backend" && n == 2 && sub == "add":
		return x.backendAdd(ctx, pos[1])
	case cmd == "backend" && n >= 3 && (sub == "grant" || sub == "ungrant"):
		return x.show(ctx, "POST", "/api/v1/backends/"+url.PathEscape(pos[1])+"/"+sub, nil, map[string][]string{"grants": pos[2:]}, func(raw json.RawMessage) error {
			var b backendInfo
			if err := json.Unmarshal(raw, &b); err != nil {
				return err
			}
			return x.backendTable([]backendInfo{b})
		})
	case cmd == "backend" && n == 2 && sub == "remove":
		return x.show(ctx, "DELETE", "/api/v1/backends/"+url.PathEscape(pos[1]), nil, nil, func(json.RawMessage) error {
			fmt.Fprintf(x.errOut, "backend %s removed\n", pos[1])
			return nil
		})
	case cmd == "audit" && n == 0:
		return x.audit(ctx)
	case cmd == "whoami" && n == 0:
		return x.show(ctx, "GET", "/api/v1/whoami", nil, nil, func(raw json.RawMessage) error {
			var op struct{ Name, Via string }
			json.Unmarshal(raw, &op)
			fmt.Fprintf(x.out, "%s (by %s)\n", op.Name, op.Via)
			return nil
		})
	}
	fmt.Fprint(x.errOut, usage)
	if cmd == "release" {
		switch {
		case n == 1 && sub == "list":
			return x.releases(ctx)
		case n == 2 && sub == "rollout":
			return x.rollout(ctx, pos[1])
		case n == 1 && sub == "status":
			return x.rolloutStatus(ctx)
		}
	}
	return fmt.Errorf("unknown command or wrong arguments: %s %s", cmd, strings.Join(pos, " "))
}

// show calls the API and prints its answer: as it came with -o json, else
// with table.
func (x *ctl) show(ctx context.Context, method, path string, q url.Values, body any, table func(json.RawMessage) error) error {
	var raw json.RawMessage
	if err := x.c.do(ctx, method, path, q, body, &raw); err != nil {
		return err
	}
	if x.o.output == "json" {
		_, err := fmt.Fprintln(x.out, string(raw))
		return err
	}
	return table(raw)
}

type fleetAgent struct {
	ID           string        `json:"id"`
	Tenant       string        `json:"tenant"`
	Hostname     string        `json:"hostname"`
	State        string        `json:"state"`
	Reason       string        `json:"reason"`
	Version      string        `json:"version"`
	OS           string        `json:"os"`
	Arch         string        `json:"arch"`
	Transport    string        `json:"transport"`
	RTT          time.Duration `json:"rtt_ns"`
	Sessions     int           `json:"sessions"`
	StreamsOpen  int64         `json:"streams_open"`
	StreamsTotal uint64        `json:"streams_total"`
	BytesIn      uint64        `json:"bytes_in"`
	BytesOut     uint64        `json:"bytes_out"`
	LastSeen     time.Time     `json:"last_seen"`
	CertNotAfter time.Time     `json:"cert_not_after"`
	ConfigError  string        `json:"config_error"`
	EnrolledAt   time.Time     `json:"enrolled_at"`
}

func (x *ctl) agents(ctx context.Context) error {
	q := url.Values{}
	if x.o.tenant != "" {
		q.Set("tenant", x.o.tenant)
	}
	if x.o.state != "" {
		q.Set("state", x.o.state)
	}
	if x.o.unhealthy {
		q.Set("unhealthy", "true")
	}
	return x.show(ctx, "GET", "/api/v1/agents", q, nil, func(raw json.RawMessage) error {
		var res struct {
			Agents []fleetAgent `json:"agents"`
		}
		if err := json.Unmarshal(raw, &res); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(x.out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "STATE\tTENANT\tAGENT\tHOSTNAME\tVERSION\tOS\tTRANSPORT\tRTT\tSTREAMS\tLAST SEEN\tCERT EXPIRES\tREASON")
		now := time.Now()
		for _, a := range res.Agents {
			osArch := "-"
			if a.OS != "" {
				osArch = a.OS + "/" + a.Arch
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", a.State, a.Tenant, a.ID, dash(a.Hostname), dash(a.Version), osArch,
				dash(a.Transport), rtt(a), a.StreamsOpen, ago(a.LastSeen, now), until(a.CertNotAfter, now), dash(a.Reason))
		}
		return tw.Flush()
	})
}

func (x *ctl) agentShow(ctx context.Context, id string) error {
	return x.show(ctx, "GET", "/api/v1/agents/"+url.PathEscape(id), nil, nil, func(raw json.RawMessage) error {
		var a struct {
			fleetAgent
			RevokedReason string `json:"revoked_reason"`
			Live          []struct {
				SessionID   string          `json:"session_id"`
				Transport   string          `json:"transport"`
				Remote      string          `json:"remote"`
				ConnectedAt time.Time       `json:"connected_at"`
				Draining    bool            `json:"draining"`
				StreamsOpen int64           `json:"streams_open"`
				Report      json.RawMessage `json:"report"`
			} `json:"live"`
		}
		if err := json.Unmarshal(raw, &a); err != nil {
			return err
		}
		now := time.Now()
		tw := tabwriter.NewWriter(x.out, 0, 4, 2, ' ', 0)
		for _, kv := range [][2]string{
			{"agent", a.ID}, {"tenant", a.Tenant}, {"hostname", dash(a.Hostname)}, {"state", a.State}, {"reason", dash(a.Reason)},
			{"version", dash(a.Version)}, {"os/arch", dash(strings.Trim(a.OS+"/"+a.Arch, "/"))}, {"transport", dash(a.Transport)}, {"rtt", rtt(a.fleetAgent)},
			{"streams", fmt.Sprintf("%d open, %d total", a.StreamsOpen, a.StreamsTotal)},
			{"bytes", fmt.Sprintf("%d in, %d out", a.BytesIn, a.BytesOut)},
			{"last seen", ago(a.LastSeen, now)}, {"certificate expires", until(a.CertNotAfter, now)},
			{"config error", dash(a.ConfigError)}, {"enrolled", a.EnrolledAt.Format(time.RFC3339)},
		} {
			fmt.Fprintf(tw, "%s:\t%s\n", kv[0], kv[1])
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if len(a.Live) == 0 {
			fmt.Fprintln(x.out, "\nno live sessions on this relay")
			return nil
		}
		fmt.Fprintln(x.out, "\nSESSIONS")
		tw = tabwriter.NewWriter(x.out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SESSION\tTRANSPORT\tREMOTE\tCONNECTED\tSTREAMS\tDRAINING\tREPORT")
		for _, l := range a.Live {
			rep := "none yet"
			if len(l.Report) > 0 && string(l.Report) != "null" {
				rep = "received"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%v\t%s\n", l.SessionID, l.Transport, l.Remote, ago(l.ConnectedAt, now), l.StreamsOpen, l.Draining, rep)
		}
		return tw.Flush()
	})
}

type tenantSummary struct {
	Name   string `json:"name"`
	Agents struct {
		Up, Degraded, Down, Revoked int
	} `json:"agents"`
	Limits *struct {
		MaxAgents  int      `json:"max_agents"`
		MaxStreams int      `json:"max_streams"`
		OpenRate   float64  `json:"open_rate"`
		OpenBurst  int      `json:"open_burst"`
		CIDRs      []string `json:"cidrs"`
	} `json:"limits"`
}

func (x *ctl) tenants(ctx context.Context) error {
	return x.show(ctx, "GET", "/api/v1/tenants", nil, nil, func(raw json.RawMessage) error {
		var res struct {
			Tenants []tenantSummary `json:"tenants"`
		}
		if err := json.Unmarshal(raw, &res); err != nil {
			return err
		}
		return x.tenantTable(res.Tenants)
	})
}

func (x *ctl) tenantTable(ts []tenantSummary) error {
	tw := tabwriter.NewWriter(x.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TENANT\tUP\tDEGRADED\tDOWN\tREVOKED\tLIMITS")
	for _, t := range ts {
		limits := "-"
		if l := t.Limits; l != nil {
			limits = fmt.Sprintf("agents %s, streams %s, rate %s, networks %s", unlimited(l.MaxAgents), unlimited(l.MaxStreams), unlimited(l.OpenRate), cmp.Or(strings.Join(l.CIDRs, ","), "any"))
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%s\n", t.Name, t.Agents.Up, t.Agents.Degraded, t.Agents.Down, t.Agents.Revoked, limits)
	}
	return tw.Flush()
}

func (x *ctl) limits(ctx context.Context, tenant string) error {
	path := "/api/v1/tenants/" + url.PathEscape(tenant) + "/limits"
	method := "GET"
	var body any
	if x.o.set["max-agents"] || x.o.set["max-streams"] || x.o.set["open-rate"] || x.o.set["open-burst"] || x.o.set["cidrs"] {
		method = "PUT"
		cidrs := []string{}
		if x.o.cidrs != "" {
			cidrs = strings.Split(x.o.cidrs, ",")
		}
		body = map[string]any{"max_agents": x.o.maxAgents, "max_streams": x.o.maxStreams, "open_rate": x.o.openRate, "open_burst": x.o.openBurst, "cidrs": cidrs}
	}
	return x.show(ctx, method, path, nil, body, func(raw json.RawMessage) error {
		var l struct {
			Tenant     string   `json:"tenant"`
			MaxAgents  int      `json:"max_agents"`
			MaxStreams int      `json:"max_streams"`
			OpenRate   float64  `json:"open_rate"`
			OpenBurst  int      `json:"open_burst"`
			CIDRs      []string `json:"cidrs"`
		}
		if err := json.Unmarshal(raw, &l); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(x.out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TENANT\tMAX AGENTS\tMAX STREAMS\tOPEN RATE\tBURST\tNETWORKS")
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", l.Tenant, unlimited(l.MaxAgents), unlimited(l.MaxStreams), unlimited(l.OpenRate), l.OpenBurst, cmp.Or(strings.Join(l.CIDRs, ","), "any"))
		return tw.Flush()
	})
}

type tokenInfo struct {
	ID        string    `json:"id"`
	Tenant    string    `json:"tenant"`
	ExpiresAt time.Time `json:"expires_at"`
	MaxUses   int       `json:"max_uses"`
	Uses      int       `json:"uses"`
}

func (x *ctl) tokenCreate(ctx context.Context) error {
	if x.o.tenant == "" {
		return errors.New("token create needs --tenant")
	}
	body := map[string]any{"tenant": x.o.tenant, "uses": x.o.uses, "ttl": x.o.ttl}
	return x.show(ctx, "POST", "/api/v1/tokens", nil, body, func(raw json.RawMessage) error {
		var res struct {
			Token string    `json:"token"`
			Info  tokenInfo `json:"info"`
		}
		if err := json.Unmarshal(raw, &res); err != nil {
			return err
		}
		fmt.Fprintln(x.out, res.Token)
		fmt.Fprintf(x.errOut, "join token %s for tenant %s: %d use(s), expires %s\n", res.Info.ID, res.Info.Tenant, res.Info.MaxUses, res.Info.ExpiresAt.Format(time.RFC3339))
		return nil
	})
}

func (x *ctl) tokens(ctx context.Context) error {
	q := url.Values{}
	if x.o.tenant != "" {
		q.Set("tenant", x.o.tenant)
	}
	return x.show(ctx, "GET", "/api/v1/tokens", q, nil, func(raw json.RawMessage) error {
		var res struct {
			Tokens []tokenInfo `json:"tokens"`
		}
		if err := json.Unmarshal(raw, &res); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(x.out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tTENANT\tUSES\tEXPIRES")
		for _, t := range res.Tokens {
			fmt.Fprintf(tw, "%s\t%s\t%d/%d\t%s\n", t.ID, t.Tenant, t.Uses, t.MaxUses, t.ExpiresAt.Format(time.RFC3339))
		}
		return tw.Flush()
	})
}

type backendInfo struct {
	Name   string `json:"name"`
	Grants []struct {
		Tenant  string `json:"tenant"`
		Service string `json:"service"`
	} `json:"grants"`
	CreatedAt time.Time `json:"created_at"`
}

func (x *ctl) backends(ctx context.Context) error {
	return x.show(ctx, "GET", "/api/v1/backends", nil, nil, func(raw json.RawMessage) error {
		var res struct {
			Backends []backendInfo `json:"backends"`
		}
		if err := json.Unmarshal(raw, &res); err != nil {
			return err
		}
		return x.backendTable(res.Backends)
	})
}

func (x *ctl) backendTable(bs []backendInfo) error {
	tw := tabwriter.NewWriter(x.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tGRANTS\tCREATED")
	for _, b := range bs {
		gs := make([]string, len(b.Grants))
		for i, g := range b.Grants {
			gs[i] = g.Tenant + "/" + g.Service
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", b.Name, dash(strings.Join(gs, ",")), b.CreatedAt.Format(time.RFC3339))
	}
	return tw.Flush()
}

func (x *ctl) backendAdd(ctx context.Context, name string) error {
	if x.o.allow == "" {
		return errors.New("backend add needs --allow tenant/service,…")
	}
	body := map[string]any{"name": name, "grants": strings.Split(x.o.allow, ",")}
	return x.show(ctx, "POST", "/api/v1/backends", nil, body, func(raw json.RawMessage) error {
		var res struct {
			APIKey string `json:"api_key"`
		}
		if err := json.Unmarshal(raw, &res); err != nil {
			return err
		}
		fmt.Fprintln(x.out, res.APIKey)
		fmt.Fprintf(x.errOut, "backend %s added; its API key (above) is shown only once\n", name)
		return nil
	})
}

func (x *ctl) audit(ctx context.Context) error {
	q := url.Values{}
	for k, v := range map[string]string{"tenant": x.o.tenant, "agent": x.o.agent, "backend": x.o.backend, "kind": x.o.kind,
		"since": x.o.since, "until": x.o.until, "cursor": x.o.cursor} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if x.o.limit != 0 {
		q.Set("limit", strconv.Itoa(x.o.limit))
	}
	return x.show(ctx, "GET", "/api/v1/audit", q, nil, func(raw json.RawMessage) error {
		var res struct {
			Records []struct {
				At      time.Time       `json:"at"`
				Kind    string          `json:"kind"`
				Outcome string          `json:"outcome"`
				Tenant  string          `json:"tenant"`
				Agent   string          `json:"agent"`
				Backend string          `json:"backend"`
				Actor   string          `json:"actor"`
				Detail  json.RawMessage `json:"detail"`
			} `json:"records"`
			NextCursor string `json:"next_cursor"`
		}
		if err := json.Unmarshal(raw, &res); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(x.out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TIME\tKIND\tOUTCOME\tTENANT\tAGENT\tBACKEND\tACTOR\tDETAIL")
		for _, r := range res.Records {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.At.Format("2006-01-02T15:04:05.000Z07:00"), r.Kind, r.Outcome,
				dash(r.Tenant), dash(r.Agent), dash(r.Backend), dash(r.Actor), dash(string(r.Detail)))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if res.NextCursor != "" {
			fmt.Fprintf(x.errOut, "more: tetherctl audit --cursor %s (with the same filters)\n", res.NextCursor)
		}
		return nil
	})
}

func dash(s string) string { return cmp.Or(s, "-") }

func unlimited[T int | float64](v T) string {
	if v == 0 {
		return "unlimited"
	}
	return fmt.Sprint(v)
}

func rtt(a fleetAgent) string {
	if a.Sessions == 0 {
		return "-"
	}
	return a.RTT.Round(10 * time.Microsecond).String()
}

func ago(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return now.Sub(t).Round(time.Second).String() + " ago"
}

func until(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := t.Sub(now).Round(time.Minute)
	if d < 0 {
		return "expired"
	}
	return "in " + d.String()
}

func splitList(s string) []string {
	var out []string
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

func (x *ctl) releases(ctx context.Context) error {
	return x.show(ctx, "GET", "/api/v1/releases", nil, nil, func(raw json.RawMessage) error {
		var res struct {
			Releases []struct {
				Version, OS, Arch, Channel, SHA256 string
				Size                               int64
				Expires                            time.Time
				KeyID                              string `json:"key_id"`
			}
		}
		if err := json.Unmarshal(raw, &res); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(x.out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "VERSION\tPLATFORM\tCHANNEL\tSIZE\tEXPIRES\tKEY\tSHA256")
		for _, r := range res.Releases {
			fmt.Fprintf(tw, "%s\t%s/%s\t%s\t%d\t%s\t%s\t%s\n", r.Version, r.OS, r.Arch, r.Channel, r.Size, r.Expires.Format(time.RFC3339), r.KeyID, r.SHA256)
		}
		return tw.Flush()
	})
}

func (x *ctl) rollout(ctx context.Context, version string) error {
	body := map[string]any{"version": version, "percent": x.o.percent, "tenants": splitList(x.o.tenants),
		"agents": splitList(x.o.agents), "halt_at": x.o.haltAt, "batch": x.o.batch}
	return x.show(ctx, "POST", "/api/v1/rollouts", nil, body, func(raw json.RawMessage) error {
		var res struct {
			Rollout struct {
				ID      int64
				Version string
			}
			Warnings []string
		}
		if err := json.Unmarshal(raw, &res); err != nil {
			return err
		}
		for _, w := range res.Warnings {
			fmt.Fprintf(x.errOut, "warning: %s\n", w)
		}
		fmt.Fprintf(x.errOut, "rollout %d of %s started; it supersedes any earlier rollout (tetherctl release status)\n", res.Rollout.ID, res.Rollout.Version)
		return nil
	})
}

func (x *ctl) rolloutStatus(ctx context.Context) error {
	q := url.Values{}
	if x.o.version != "" {
		q.Set("version", x.o.version)
	}
	return x.show(ctx, "GET", "/api/v1/rollouts", q, nil, func(raw json.RawMessage) error {
		var res struct {
			Rollouts []struct {
				ID              int64
				Version, State  string
				Reason          string
				Percent         int
				Tenants, Agents []string
				HaltAt          float64   `json:"halt_at"`
				CreatedAt       time.Time `json:"created_at"`
			}
			Agents []struct {
				Agent, Tenant, Version, From, State, Reason, Message string
				UpdatedAt                                            time.Time `json:"updated_at"`
			}
		}
		if err := json.Unmarshal(raw, &res); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(x.out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ROLLOUT\tVERSION\tSTATE\tTO\tHALT AT\tSTARTED\tREASON")
		for _, r := range res.Rollouts {
			to := fmt.Sprintf("%d%%", r.Percent)
			if len(r.Tenants) > 0 {
				to = "tenants " + strings.Join(r.Tenants, ",")
			} else if len(r.Agents) > 0 {
				to = "agents " + strings.Join(r.Agents, ",")
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%g\t%s\t%s\n", r.ID, r.Version, r.State, to, r.HaltAt, r.CreatedAt.Format(time.RFC3339), dash(r.Reason))
		}
		fmt.Fprintln(tw, "")
		fmt.Fprintln(tw, "AGENT\tTENANT\tFROM\tVERSION\tSTATE\tUPDATED\tREASON")
		for _, a := range res.Agents {
			why := strings.TrimSpace(a.Reason + " " + a.Message)
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", a.Agent, a.Tenant, dash(a.From), a.Version, a.State, a.UpdatedAt.Format(time.RFC3339), dash(why))
		}
		return tw.Flush()
	})
}
