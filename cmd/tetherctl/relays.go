package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"time"

	"github.com/spf13/cobra"

	"github.com/tetherhq/tether/cmd/internal/cli"
)

// relay is one relay of the cluster as the admin API lists it.
type relay struct {
	ID           string        `json:"id"`
	AgentAddr    string        `json:"agent_addr"`
	PeerAddr     string        `json:"peer_addr"`
	Version      string        `json:"version"`
	Schema       int           `json:"schema"`
	StartedAt    time.Time     `json:"started_at"`
	HeartbeatAge time.Duration `json:"heartbeat_age_ns"`
	Alive        bool          `json:"alive"`
	Draining     bool          `json:"draining"`
	Agents       int           `json:"agents"`
	Sessions     int           `json:"sessions"`
	Streams      int64         `json:"streams"`
	This         bool          `json:"this"`
}

func (x *ctl) relayList() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "The relays of the cluster: addresses, heartbeat, agents held, draining",
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return x.call(cmd, "GET", "/api/v1/relays", nil, nil, func(w io.Writer, raw json.RawMessage) error {
				var res struct {
					Relays []relay `json:"relays"`
				}
				if err := json.Unmarshal(raw, &res); err != nil {
					return err
				}
				now := time.Now()
				rows := make([][]string, len(res.Relays))
				for i, r := range res.Relays {
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
				return cli.WriteTable(w, []string{"RELAY", "STATE", "AGENT ADDRESS", "PEER ADDRESS", "VERSION", "SCHEMA", "HEARTBEAT", "AGENTS", "SESSIONS", "STREAMS", "STARTED"}, rows)
			})
		},
	}
}

func (x *ctl) relayCmd() *cobra.Command {
	remove := &cobra.Command{
		Use:   "remove ID",
		Short: "Forget a relay that is gone for good (one still running comes back, with its agents, at its next heartbeat)",
		Args:  cli.Args("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return x.act(cmd, "DELETE", "/api/v1/relays/"+url.PathEscape(args[0]), nil, func(json.RawMessage) {
				say(cmd, "relay %s forgotten", args[0])
			})
		},
	}
	return cli.Group("relay", "The relays of a cluster sharing one store", x.relayList(), remove)
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
