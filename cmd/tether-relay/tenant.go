package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/tetherhq/tether/cmd/internal/cli"
	"github.com/tetherhq/tether/relay/admin"
)

func tenantCmd(g *globals) *cobra.Command {
	add := &cobra.Command{
		Use:   "add NAME",
		Short: "Add a tenant (names are DNS labels)",
		Args:  cli.Args("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withAdmin(cmd, func(ctx context.Context, a *admin.Admin) error {
				if err := a.AddTenant(ctx, args[0]); err != nil {
					return err
				}
				say(cmd, "tenant %s added", args[0])
				return nil
			})
		},
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "List tenants",
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.withAdmin(cmd, func(ctx context.Context, a *admin.Admin) error {
				ts, err := a.Tenants(ctx)
				if err != nil {
					return err
				}
				if ts == nil {
					ts = []admin.Tenant{}
				}
				now := time.Now()
				return cli.Print(cmd.OutOrStdout(), output(cmd), ts, func(w io.Writer) error {
					rows := make([][]string, len(ts))
					for i, t := range ts {
						rows[i] = []string{t.Name, cli.Since(t.CreatedAt, now)}
					}
					return cli.WriteTable(w, []string{"NAME", "CREATED"}, rows)
				})
			})
		},
	}
	show := &cobra.Command{
		Use:   "show NAME",
		Short: "Show a tenant: its agents and limits",
		Args:  cli.Args("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withAdmin(cmd, func(ctx context.Context, a *admin.Admin) error {
				d, err := tenantDetail(ctx, a, args[0])
				if err != nil {
					return err
				}
				return cli.Print(cmd.OutOrStdout(), output(cmd), d, func(w io.Writer) error {
					limits := "none"
					if d.Limits != nil {
						limits = limitsText(*d.Limits)
					}
					return cli.WriteFields(w, [][2]string{{"tenant", d.Name}, {"created", cli.When(d.CreatedAt, time.Now())},
						{"agents", fmt.Sprintf("%d enrolled, %d revoked", d.Agents.Enrolled, d.Agents.Revoked)}, {"limits", limits}})
				})
			})
		},
	}
	return cli.Group("tenant", "Tenants and their limits", add, list, show, limitsCmd(g))
}

// tenantInfo is one tenant as tether-relay tenant show prints it: the
// data directory knows which agents are enrolled, not which are connected
// (tetherctl tenant show asks a running relay).
type tenantInfo struct {
	admin.Tenant
	Agents struct {
		Enrolled int `json:"enrolled"`
		Revoked  int `json:"revoked"`
	} `json:"agents"`
	Limits *admin.Limits `json:"limits"`
}

func tenantDetail(ctx context.Context, a *admin.Admin, name string) (tenantInfo, error) {
	var d tenantInfo
	t, err := a.Tenant(ctx, name)
	if err != nil {
		return d, err
	}
	d.Tenant = t
	agents, err := a.Agents(ctx, name)
	if err != nil {
		return d, err
	}
	for _, x := range agents {
		if x.RevokedAt != nil {
			d.Agents.Revoked++
		} else {
			d.Agents.Enrolled++
		}
	}
	all, err := a.AllLimits(ctx)
	if err != nil {
		return d, err
	}
	for i := range all {
		if all[i].Tenant == name {
			d.Limits = &all[i]
		}
	}
	return d, nil
}

// limitFlags are the flags of tenant limits, in both binaries.
type limitFlags struct {
	maxAgents, maxStreams, openBurst int
	openRate                         float64
	cidrs                            []string
	bandwidth                        cli.Size
	replace                          bool
}

const limitsLong = `Show a tenant's limits, or change them.

With limit flags, only the limits given change: the others keep their
values (so --max-streams 5 leaves the tenant's allowed networks alone).
With --replace, the limits given replace all of them, and those not given
become unlimited. 0, or an empty --cidrs, means unlimited. --bandwidth
takes a size per second each way, such as 10MiB (10 MiB/s to the
tenant's services and 10 MiB/s back), shared by all the tenant's
streams through one relay. Without a NAME, list every tenant's limits,
"unlimited" (0 in JSON and YAML) where a tenant has none. A running relay
applies them within a second.`

func (f *limitFlags) add(fs *pflag.FlagSet) {
	fs.IntVar(&f.maxAgents, "max-agents", 0, "agents enrolled and connected (0: unlimited)")
	fs.IntVar(&f.maxStreams, "max-streams", 0, "concurrent streams (0: unlimited)")
	fs.Float64Var(&f.openRate, "open-rate", 0, "stream opens per second per backend (0: unlimited)")
	fs.IntVar(&f.openBurst, "open-burst", 0, "burst of stream opens above the rate (0: the rate)")
	fs.StringSliceVar(&f.cidrs, "cidrs", nil, "networks the tenant's agents may connect from, comma-separated (empty: any)")
	fs.Var(&f.bandwidth, "bandwidth", "bytes per second each way, shared by the tenant's streams through each relay, such as 10MiB (0: unlimited)")
	fs.BoolVar(&f.replace, "replace", false, "replace all the limits: those not given become unlimited")
}

// given reports whether any limit flag was given.
func (f *limitFlags) given(fs *pflag.FlagSet) bool {
	for _, n := range []string{"max-agents", "max-streams", "open-rate", "open-burst", "cidrs", "bandwidth", "replace"} {
		if fs.Changed(n) {
			return true
		}
	}
	return false
}

// patch is the change the flags given make.
func (f *limitFlags) patch(fs *pflag.FlagSet) admin.LimitsPatch {
	var p admin.LimitsPatch
	if fs.Changed("max-agents") {
		p.MaxAgents = &f.maxAgents
	}
	if fs.Changed("max-streams") {
		p.MaxStreams = &f.maxStreams
	}
	if fs.Changed("open-rate") {
		p.OpenRate = &f.openRate
	}
	if fs.Changed("open-burst") {
		p.OpenBurst = &f.openBurst
	}
	if fs.Changed("cidrs") {
		cidrs := cleanList(f.cidrs)
		p.CIDRs = &cidrs
	}
	if fs.Changed("bandwidth") {
		bw := int64(f.bandwidth)
		p.Bandwidth = &bw
	}
	return p
}

// limits is what --replace sets.
func (f *limitFlags) limits(tenant string) admin.Limits {
	return admin.Limits{Tenant: tenant, MaxAgents: f.maxAgents, MaxStreams: f.maxStreams, OpenRate: f.openRate, OpenBurst: f.openBurst, CIDRs: cleanList(f.cidrs), Bandwidth: int64(f.bandwidth)}
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

func limitsCmd(g *globals) *cobra.Command {
	var f limitFlags
	cmd := &cobra.Command{
		Use:   "limits [NAME]",
		Short: "Show or change a tenant's limits (only those given; --replace for all)",
		Long:  limitsLong,
		Args:  cli.Args("[NAME]"),
		RunE: func(cmd *cobra.Command, args []string) error {
			fs := cmd.Flags()
			if len(args) == 0 {
				if f.given(fs) {
					return cli.Usagef("tenant limits: name the tenant whose limits to change")
				}
				return g.withAdmin(cmd, func(ctx context.Context, a *admin.Admin) error {
					ls, err := a.EveryTenantLimits(ctx)
					if err != nil {
						return err
					}
					return printLimits(cmd, ls, false)
				})
			}
			name := args[0]
			return g.withAdmin(cmd, func(ctx context.Context, a *admin.Admin) error {
				var l admin.Limits
				var err error
				switch {
				case f.replace:
					l = f.limits(name)
					if err = a.SetLimits(ctx, l); err == nil {
						l, err = a.Limits(ctx, name)
						say(cmd, "limits of tenant %s replaced; a running relay applies them within a second", name)
					}
				case f.given(fs):
					l, err = a.PatchLimits(ctx, name, f.patch(fs))
					if err == nil {
						say(cmd, "limits of tenant %s changed; a running relay applies them within a second", name)
					}
				default:
					l, err = a.Limits(ctx, name)
				}
				if err != nil {
					return err
				}
				return printLimits(cmd, []admin.Limits{l}, true)
			})
		},
	}
	f.add(cmd.Flags())
	return cmd
}

// printLimits prints limits: one tenant's (an object in JSON) or a list.
func printLimits(cmd *cobra.Command, ls []admin.Limits, one bool) error {
	if ls == nil {
		ls = []admin.Limits{}
	}
	for i := range ls {
		if ls[i].CIDRs == nil {
			ls[i].CIDRs = []string{}
		}
	}
	var v any = ls
	if one {
		v = ls[0]
	}
	return cli.Print(cmd.OutOrStdout(), output(cmd), v, func(w io.Writer) error {
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

func limitsRow(l admin.Limits) []string {
	burst := fmt.Sprint(l.OpenBurst)
	if l.OpenBurst == 0 {
		burst = "the rate"
	}
	return []string{l.Tenant, cli.Limit(l.MaxAgents), cli.Limit(l.MaxStreams), rate(l.OpenRate), burst, cli.Rate(l.Bandwidth), networks(l.CIDRs)}
}

func limitsText(l admin.Limits) string {
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
