package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/spf13/cobra"

	"github.com/tetherhq/tether/cmd/internal/cli"
	"github.com/tetherhq/tether/relay"
	"github.com/tetherhq/tether/relay/admin"
)

func tokenCmd(g *globals) *cobra.Command {
	var tenant string
	var ttl time.Duration
	var uses int
	create := &cobra.Command{
		Use:   "create --tenant NAME",
		Short: "Create a join token for a tenant's agents (only the token on stdout)",
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if tenant == "" {
				return cli.Usagef("token create needs --tenant")
			}
			return g.withAdmin(cmd, func(ctx context.Context, a *admin.Admin) error {
				tok, info, err := a.CreateToken(ctx, tenant, ttl, uses)
				if err != nil {
					return err
				}
				return printCreated(cmd, tok, map[string]any{"token": tok, "info": info}, func() {
					say(cmd, "join token %s for tenant %s: %d use(s), expires %s", info.ID, info.Tenant, info.MaxUses, cli.When(info.ExpiresAt, time.Now()))
					say(cmd, "enrol an agent with: tether-agent enroll --relay RELAY_HOST:%s --token-file FILE --state-dir DIR", g.agentPort())
				})
			})
		},
	}
	create.Flags().StringVar(&tenant, "tenant", "", "tenant the token enrols agents into (required)")
	create.Flags().DurationVar(&ttl, "ttl", admin.DefaultTokenTTL, "how long the token stays valid")
	create.Flags().IntVar(&uses, "uses", 1, "how many agents the token may enrol")

	var listTenant string
	list := &cobra.Command{
		Use:   "list",
		Short: "List join tokens (without their secrets)",
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.withAdmin(cmd, func(ctx context.Context, a *admin.Admin) error {
				ts, err := a.Tokens(ctx, listTenant)
				if err != nil {
					return err
				}
				if ts == nil {
					ts = []admin.TokenInfo{}
				}
				return cli.Print(cmd.OutOrStdout(), output(cmd), ts, func(w io.Writer) error {
					now := time.Now()
					rows := make([][]string, len(ts))
					for i, t := range ts {
						rows[i] = []string{t.ID, t.Tenant, fmt.Sprintf("%d/%d", t.Uses, t.MaxUses), cli.When(t.ExpiresAt, now)}
					}
					return cli.WriteTable(w, []string{"ID", "TENANT", "USES", "EXPIRES"}, rows)
				})
			})
		},
	}
	list.Flags().StringVar(&listTenant, "tenant", "", "only this tenant's tokens")

	revoke := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a join token: it enrols no more agents",
		Args:  cli.Args("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withAdmin(cmd, func(ctx context.Context, a *admin.Admin) error {
				info, err := a.RevokeToken(ctx, args[0])
				if err != nil {
					return err
				}
				say(cmd, "join token %s of tenant %s revoked; agents it enrolled are not affected", info.ID, info.Tenant)
				return nil
			})
		},
	}
	return cli.Group("token", "Join tokens that enrol agents", create, list, revoke)
}

// agentPort is the port of the relay's agent listener as serve would
// take it from TETHER_AGENT_LISTEN or the config file's agent_listen,
// else the default's: what a join token's enrolment hint names.
func (g *globals) agentPort() string {
	listen := relay.DefaultAgentListen
	if pick, err := g.picker(); err == nil {
		listen = pick(false, "", "TETHER_AGENT_LISTEN", "agent_listen", listen)
	}
	if _, port, err := net.SplitHostPort(listen); err == nil && port != "" {
		return port
	}
	_, port, _ := net.SplitHostPort(relay.DefaultAgentListen)
	return port
}

// printCreated prints what a command created: the secret alone on stdout
// for a table (with messages on stderr from table), else v.
func printCreated(cmd *cobra.Command, secret string, v any, messages func()) error {
	return cli.Print(cmd.OutOrStdout(), output(cmd), v, func(w io.Writer) error {
		if _, err := fmt.Fprintln(w, secret); err != nil {
			return err
		}
		messages()
		return nil
	})
}
