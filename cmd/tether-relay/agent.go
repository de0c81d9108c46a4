package main

import (
	"context"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/tetherhq/tether/cmd/internal/cli"
	"github.com/tetherhq/tether/relay/admin"
)

func agentCmd(g *globals) *cobra.Command {
	var tenant string
	list := &cobra.Command{
		Use:   "list",
		Short: "List enrolled agents: when each was last seen, and revocations",
		Long: `List enrolled agents with when a relay last heard from each and their
revocations. The data directory does not know which agents are connected
now: tetherctl agent list asks a running relay.`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.withAdmin(cmd, func(ctx context.Context, a *admin.Admin) error {
				as, err := a.Agents(ctx, tenant)
				if err != nil {
					return err
				}
				if as == nil {
					as = []admin.AgentInfo{}
				}
				return cli.Print(cmd.OutOrStdout(), output(cmd), as, func(w io.Writer) error {
					now := time.Now()
					rows := make([][]string, len(as))
					for i, x := range as {
						rows[i] = []string{x.ID, x.Tenant, x.Hostname, cli.Since(x.EnrolledAt, now), cli.When(x.CertNotAfter, now), lastSeen(x, now), revoked(x, now)}
					}
					return cli.WriteTable(w, []string{"ID", "TENANT", "HOSTNAME", "ENROLLED", "CERT EXPIRES", "LAST SEEN", "REVOKED"}, rows)
				})
			})
		},
	}
	list.Flags().StringVar(&tenant, "tenant", "", "only this tenant's agents")

	show := &cobra.Command{
		Use:   "show ID",
		Short: "Show an enrolled agent",
		Args:  cli.Args("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withAdmin(cmd, func(ctx context.Context, a *admin.Admin) error {
				x, err := a.Agent(ctx, args[0])
				if err != nil {
					return err
				}
				return cli.Print(cmd.OutOrStdout(), output(cmd), x, func(w io.Writer) error {
					now := time.Now()
					return cli.WriteFields(w, [][2]string{{"agent", x.ID}, {"tenant", x.Tenant}, {"hostname", x.Hostname},
						{"enrolled", cli.When(x.EnrolledAt, now)}, {"certificate expires", cli.When(x.CertNotAfter, now)},
						{"certificate root", x.CertRoot}, {"last seen", lastSeen(x, now)}, {"revoked", revoked(x, now)}})
				})
			})
		},
	}

	var reason string
	revoke := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke an agent: a running relay closes its sessions within a second or two",
		Args:  cli.Args("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withAdmin(cmd, func(ctx context.Context, a *admin.Admin) error {
				x, err := a.RevokeAgent(ctx, args[0], reason)
				if err != nil {
					return err
				}
				say(cmd, "agent %s of tenant %s revoked at %s; a running relay closes its connections within a second or two",
					x.ID, x.Tenant, x.RevokedAt.UTC().Format(time.RFC3339))
				return nil
			})
		},
	}
	revoke.Flags().StringVar(&reason, "reason", "", "why (kept in the audit trail and told to the agent)")

	var message string
	drain := &cobra.Command{
		Use:   "drain ID",
		Short: "Tell an agent's sessions to go away, on every relay holding them; it reconnects",
		Args:  cli.Args("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withAdmin(cmd, func(ctx context.Context, a *admin.Admin) error {
				if _, err := a.DrainAgent(ctx, args[0], message); err != nil {
					return err
				}
				say(cmd, "agent %s drained: the relays holding its sessions tell it to reconnect within a second or two", args[0])
				return nil
			})
		},
	}
	drain.Flags().StringVar(&message, "message", "", "why, told to the agent and kept in the audit trail")
	return cli.Group("agent", "Enrolled agents", list, show, revoke, drain)
}

func lastSeen(x admin.AgentInfo, now time.Time) string {
	if x.LastSeen == nil {
		return "never"
	}
	return cli.Since(*x.LastSeen, now)
}

func revoked(x admin.AgentInfo, now time.Time) string {
	if x.RevokedAt == nil {
		return "-"
	}
	s := cli.When(*x.RevokedAt, now)
	if x.RevokedReason != "" {
		s += ": " + x.RevokedReason
	}
	return s
}
