package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/tetherhq/tether/cmd/internal/cli"
)

func (x *ctl) tenantCmd() *cobra.Command {
	add := &cobra.Command{
		Use:   "add NAME",
		Short: "Add a tenant (names are DNS labels)",
		Args:  cli.Args("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return x.act(cmd, "POST", "/api/v1/tenants", map[string]string{"name": args[0]}, func(json.RawMessage) {
				say(cmd, "tenant %s added", args[0])
			})
		},
	}
	show := &cobra.Command{
		Use:   "show NAME",
		Short: "One tenant: its agents by state and its limits",
		Args:  cli.Args("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return x.call(cmd, "GET", "/api/v1/tenants/"+url.PathEscape(args[0]), nil, nil, func(w io.Writer, raw json.RawMessage) error {
				var t tenantSummary
				if err := json.Unmarshal(raw, &t); err != nil {
					return err
				}
				return tenantTable(w, []tenantSummary{t})
			})
		},
	}
	return cli.Group("tenant", "Tenants and their limits", add, x.tenantList(), show, x.tenantLimits())
}

type limits struct {
	Tenant     string   `json:"tenant"`
	MaxAgents  int      `json:"max_agents"`
	MaxStreams int      `json:"max_streams"`
	OpenRate   float64  `json:"open_rate"`
	OpenBurst  int      `json:"open_burst"`
	CIDRs      []string `json:"cidrs"`
	Bandwidth  int64    `json:"bandwidth"`
}

type tenantSummary struct {
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
	Agents    struct {
		Up, Degraded, Down, Revoked int
	} `json:"agents"`
	Limits *limits `json:"limits"`
}

func (x *ctl) tenantList() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "Tenants with their agents by state and their limits",
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return x.call(cmd, "GET", "/api/v1/tenants", nil, nil, func(w io.Writer, raw json.RawMessage) error {
				var res struct {
					Tenants []tenantSummary `json:"tenants"`
				}
				if err := json.Unmarshal(raw, &res); err != nil {
					return err
				}
				return tenantTable(w, res.Tenants)
			})
		},
	}
}

func tenantTable(w io.Writer, ts []tenantSummary) error {
	rows := make([][]string, len(ts))
	for i, t := range ts {
		l := "-"
		if t.Limits != nil {
			l = limitsText(*t.Limits)
		}
		rows[i] = []string{t.Name, fmt.Sprint(t.Agents.Up), fmt.Sprint(t.Agents.Degraded), fmt.Sprint(t.Agents.Down), fmt.Sprint(t.Agents.Revoked), l}
	}
	return cli.WriteTable(w, []string{"TENANT", "UP", "DEGRADED", "DOWN", "REVOKED", "LIMITS"}, rows)
}

const limitsLong = `Show a tenant's limits, or change them.

With limit flags, only the limits given change: the others keep their
values (so --max-streams 5 leaves the tenant's allowed networks alone).
With --replace, the limits given replace all of them, and those not given
become unlimited. 0, or an empty --cidrs, means unlimited. --bandwidth
takes a size per second each way, such as 10MiB (10 MiB/s to the
tenant's services and 10 MiB/s back), shared by all the tenant's
streams through one relay. Without a NAME, list every tenant's limits,
"unlimited" (0 in JSON and YAML) where a tenant has none. The relay
applies them within a second.`

// limitFlags are the flags of tenant limits, in both binaries.
type limitFlags struct {
	maxAgents, maxStreams, openBurst int
	openRate                         float64
	cidrs                            []string
	bandwidth                        cli.Size
	replace                          bool
}

func (f *limitFlags) add(fs *pflag.FlagSet) {
	fs.IntVar(&f.maxAgents, "max-agents", 0, "agents enrolled and connected (0: unlimited)")
	fs.IntVar(&f.maxStreams, "max-streams", 0, "concurrent streams (0: unlimited)")
	fs.Float64Var(&f.openRate, "open-rate", 0, "stream opens per second per backend (0: unlimited)")
	fs.IntVar(&f.openBurst, "open-burst", 0, "burst of stream opens above the rate (0: the rate)")
	fs.StringSliceVar(&f.cidrs, "cidrs", nil, "networks the tenant's agents may connect from, comma-separated (empty: any)")
	fs.Var(&f.bandwidth, "bandwidth", "bytes per second each way, shared by the tenant's streams through each relay, such as 10MiB (0: unlimited)")
	fs.BoolVar(&f.replace, "replace", false, "replace all the limits: those not given become unlimited")
}

// limitNames are the limit flags with the API's names of the limits.
func limitNames() []struct{ flag, field string } {
	return []struct{ flag, field string }{
		{"max-agents", "max_agents"}, {"max-streams", "max_streams"}, {"open-rate", "open_rate"}, {"open-burst", "open_burst"}, {"cidrs", "cidrs"}, {"bandwidth", "bandwidth"},
	}
}

// body is the API request the flags given make: a PATCH of the limits
// given, or with --replace a PUT of them all.
func (f *limitFlags) body(fs *pflag.FlagSet) (method string, body map[string]any, given bool) {
	all := map[string]any{"max_agents": f.maxAgents, "max_streams": f.maxStreams, "open_rate": f.openRate, "open_burst": f.openBurst, "cidrs": cleanList(f.cidrs), "bandwidth": int64(f.bandwidth)}
	if f.replace {
		return "PUT", all, true
	}
	body = map[string]any{}
	for _, n := range limitNames() {
		if fs.Changed(n.flag) {
			body[n.field] = all[n.field]
		}
	}
	return "PATCH", body, len(body) > 0
}

func (x *ctl) tenantLimits() *cobra.Command {
	var f limitFlags
	cmd := &cobra.Command{
		Use:   "limits [NAME]",
		Short: "Show or change a tenant's limits (only those given; --replace for all)",
		Long:  limitsLong,
		Args:  cli.Args("[NAME]"),
		RunE: func(cmd *cobra.Command, args []string) error {
			method, body, given := f.body(cmd.Flags())
			if len(args) == 0 {
				if given {
					return cli.Usagef("tenant limits: name the tenant whose limits to change")
				}
				return x.allLimits(cmd)
			}
			path := "/api/v1/tenants/" + url.PathEscape(args[0]) + "/limits"
			if !given {
				method, body = "GET", nil
			}
			var msgs []func(json.RawMessage)
			switch method {
			case "PATCH":
				msgs = append(msgs, func(json.RawMessage) {
					say(cmd, "limits of tenant %s changed; the relay applies them within a second", args[0])
				})
			case "PUT":
				msgs = append(msgs, func(json.RawMessage) {
					say(cmd, "limits of tenant %s replaced; the relay applies them within a second", args[0])
				})
			}
			return x.call(cmd, method, path, nil, body, func(w io.Writer, raw json.RawMessage) error {
				var l limits
				if err := json.Unmarshal(raw, &l); err != nil {
					return err
				}
				return cli.WriteTable(w, limitsHeader(), [][]string{limitsRow(l)})
			}, msgs...)
		},
	}
	f.add(cmd.Flags())
	return cmd
}

// allLimits lists the limits of every tenant, unlimited where it has
// none.
func (x *ctl) allLimits(cmd *cobra.Command) error {
	c, err := x.client()
	if err != nil {
		return err
	}
	var res struct {
		Tenants []tenantSummary `json:"tenants"`
	}
	if err := c.do(cmd.Context(), "GET", "/api/v1/tenants", nil, nil, &res); err != nil {
		return err
	}
	ls := []limits{}
	for _, t := range res.Tenants {
		var l limits // none: unlimited
		if t.Limits != nil {
			l = *t.Limits
		}
		l.Tenant = t.Name
		if l.CIDRs == nil {
			l.CIDRs = []string{}
		}
		ls = append(ls, l)
	}
	f, _ := cli.OutputOf(cmd)
	return cli.Print(cmd.OutOrStdout(), f, ls, func(w io.Writer) error {
		rows := make([][]string, len(ls))
		for i, l := range ls {
			rows[i] = limitsRow(l)
		}
		return cli.WriteTable(w, limitsHeader(), rows)
	})
}

// limitsHeader is the header of limits tables.
func limitsHeader() []string {
	return []string{"TENANT", "MAX AGENTS", "MAX STREAMS", "OPEN RATE", "BURST", "BANDWIDTH", "NETWORKS"}
}

func limitsRow(l limits) []string {
	burst := fmt.Sprint(l.OpenBurst)
	if l.OpenBurst == 0 {
		burst = "the rate"
	}
	return []string{l.Tenant, cli.Limit(l.MaxAgents), cli.Limit(l.MaxStreams), rate(l.OpenRate), burst, cli.Rate(l.Bandwidth), networks(l.CIDRs)}
}

func limitsText(l limits) string {
	return fmt.Sprintf("agents %s, streams %s, opens %s, bandwidth %s, networks %s", cli.Limit(l.MaxAgents), cli.Limit(l.MaxStreams), rate(l.OpenRate), cli.Rate(l.Bandwidth), networks(l.CIDRs))
}

func rate(r float64) string {
	if r == 0 {
		return "unlimited"
	}
	return fmt.Sprintf("%g/s", r)
}

func networks(cidrs []string) string {
	if len(cidrs) == 0 {
		return "any"
	}
	return strings.Join(cidrs, ",")
}

// cleanList drops empty items (--cidrs "" is no network).
func cleanList(in []string) []string {
	out := []string{}
	for _, s := range in {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}
