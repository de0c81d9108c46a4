package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/tetherhq/tether/cmd/internal/cli"
	"github.com/tetherhq/tether/relay/admin"
)

func relayCmd(g *globals) *cobra.Command {
	list := &cobra.Command{
		Use:   "list",
		Short: "The relays sharing the store: addresses, heartbeat, agents held, draining",
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.withAdmin(cmd, func(ctx context.Context, a *admin.Admin) error {
				rs, err := a.Relays(ctx)
				if err != nil {
					return err
				}
				return cli.Print(cmd.OutOrStdout(), output(cmd), rs, func(w io.Writer) error {
					return cli.WriteTable(w, relayHeader, relayRows(rs, time.Now()))
				})
			})
		},
	}
	remove := &cobra.Command{
		Use:   "remove ID",
		Short: "Forget a relay that is gone for good (one still running comes back, with its agents, at its next heartbeat)",
		Args:  cli.Args("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withAdmin(cmd, func(ctx context.Context, a *admin.Admin) error {
				if err := a.RemoveRelay(ctx, args[0]); err != nil {
					return err
				}
				say(cmd, "relay %s forgotten", args[0])
				return nil
			})
		},
	}
	return cli.Group("relay", "The relays of a cluster sharing one store", list, remove)
}

var relayHeader = []string{"RELAY", "STATE", "AGENT ADDRESS", "PEER ADDRESS", "VERSION", "SCHEMA", "HEARTBEAT", "AGENTS", "SESSIONS", "STREAMS", "STARTED"}

func relayRows(rs []admin.Relay, now time.Time) [][]string {
	rows := make([][]string, len(rs))
	for i, r := range rs {
		state := "up"
		switch {
		case !r.Alive:
			state = "gone"
		case r.Draining:
			state = "draining"
		}
		id := r.ID
		if r.This {
			id += " (this)"
		}
		rows[i] = []string{id, state, dash(r.AgentAddr), dash(r.PeerAddr), r.Version, schemaCell(r.Schema), cli.Duration(r.HeartbeatAge) + " ago",
			fmt.Sprint(r.Agents), fmt.Sprint(r.Sessions), fmt.Sprint(r.Streams), cli.Since(r.StartedAt, now)}
	}
	return rows
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// schemaCell is a relay's schema version in a table: "-" when not known.
func schemaCell(v int) string {
	if v == 0 {
		return "-"
	}
	return fmt.Sprint(v)
}
