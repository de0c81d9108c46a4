package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tetherhq/tether/cmd/internal/cli"
)

func (x *ctl) agentCmd() *cobra.Command {
	show := x.agentShow()
	g := cli.Group("agent", "Agents: the fleet, one agent, revocation and drain", x.agentList(), show, x.agentRevoke(), x.agentDrain())
	// "tetherctl agent ID", the form of earlier versions, shows the agent;
	// a word close to a subcommand is a typo of it.
	g.Args = func(cmd *cobra.Command, args []string) error {
		switch {
		case len(args) == 0:
			return nil
		case len(args) == 1 && !cli.IsNearCommand(cmd, args[0]):
			return nil
		}
		return cli.UnknownCommand(cmd, args[0])
	}
	groupRun := g.RunE
	g.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) == 1 {
			return show.RunE(cmd, args)
		}
		return groupRun(cmd, args)
	}
	return g
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
	Relays       []string      `json:"relays"`
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

func (a fleetAgent) rtt() string {
	if a.Sessions == 0 {
		return "-"
	}
	return cli.Latency(a.RTT)
}

func (a fleetAgent) platform() string {
	if a.OS == "" {
		return ""
	}
	return a.OS + "/" + a.Arch
}

func (x *ctl) agentList() *cobra.Command {
	var tenant, state string
	var unhealthy bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "The fleet: every agent's state, needing attention first",
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q := url.Values{}
			if tenant != "" {
				q.Set("tenant", tenant)
			}
			if state != "" {
				q.Set("state", state)
			}
			if unhealthy {
				q.Set("unhealthy", "true")
			}
			return x.call(cmd, "GET", "/api/v1/agents", q, nil, func(w io.Writer, raw json.RawMessage) error {
				var res struct {
					Agents []fleetAgent `json:"agents"`
				}
				if err := json.Unmarshal(raw, &res); err != nil {
					return err
				}
				now := time.Now()
				rows := make([][]string, len(res.Agents))
				for i, a := range res.Agents {
					rows[i] = []string{a.State, a.Tenant, a.ID, a.Hostname, a.Version, a.platform(), a.Transport, a.rtt(),
						fmt.Sprint(a.StreamsOpen), dash(strings.Join(a.Relays, ",")), cli.Since(a.LastSeen, now), cli.Since(a.CertNotAfter, now), a.Reason}
				}
				return cli.WriteTable(w, []string{"STATE", "TENANT", "AGENT", "HOSTNAME", "VERSION", "OS", "TRANSPORT", "RTT", "STREAMS", "RELAYS", "LAST SEEN", "CERT EXPIRES", "REASON"}, rows)
			})
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&tenant, "tenant", "", "only this tenant's agents")
	fs.StringVar(&state, "state", "", "only agents in this state: up, degraded, down or revoked")
	fs.BoolVar(&unhealthy, "unhealthy", false, "only down and degraded agents")
	return cmd
}

func (x *ctl) agentShow() *cobra.Command {
	return &cobra.Command{
		Use:   "show ID",
		Short: "One agent: facts, state and reason, live sessions",
		Args:  cli.Args("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return x.call(cmd, "GET", "/api/v1/agents/"+url.PathEscape(args[0]), nil, nil, func(w io.Writer, raw json.RawMessage) error {
				var a struct {
					fleetAgent
					Live []struct {
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
				if err := cli.WriteFields(w, [][2]string{
					{"agent", a.ID}, {"tenant", a.Tenant}, {"hostname", a.Hostname}, {"state", a.State}, {"reason", a.Reason},
					{"version", a.Version}, {"os/arch", a.platform()}, {"transport", a.Transport}, {"rtt", a.rtt()},
					{"streams", fmt.Sprintf("%d open, %d total", a.StreamsOpen, a.StreamsTotal)},
					{"bytes", fmt.Sprintf("%s in, %s out", cli.Bytes(a.BytesIn), cli.Bytes(a.BytesOut))},
					{"last seen", cli.Since(a.LastSeen, now)}, {"certificate expires", cli.When(a.CertNotAfter, now)},
					{"config error", a.ConfigError}, {"enrolled", cli.When(a.EnrolledAt, now)},
				}); err != nil {
					return err
				}
				if len(a.Live) == 0 {
					_, err := fmt.Fprintln(w, "\nno live sessions on this relay")
					return err
				}
				fmt.Fprintln(w, "\nSESSIONS")
				rows := make([][]string, len(a.Live))
				for i, l := range a.Live {
					rep := "none yet"
					if len(l.Report) > 0 && string(l.Report) != "null" {
						rep = "received"
					}
					rows[i] = []string{l.SessionID, l.Transport, l.Remote, cli.Since(l.ConnectedAt, now), fmt.Sprint(l.StreamsOpen), fmt.Sprint(l.Draining), rep}
				}
				return cli.WriteTable(w, []string{"SESSION", "TRANSPORT", "REMOTE", "CONNECTED", "STREAMS", "DRAINING", "REPORT"}, rows)
			})
		},
	}
}

func (x *ctl) agentRevoke() *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke an agent: the relay closes its sessions within a second or two",
		Args:  cli.Args("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return x.act(cmd, "POST", "/api/v1/agents/"+url.PathEscape(args[0])+"/revoke", map[string]string{"reason": reason}, func(raw json.RawMessage) {
				var a struct {
					ID, Tenant string
					RevokedAt  time.Time `json:"revoked_at"`
				}
				json.Unmarshal(raw, &a)
				say(cmd, "agent %s of tenant %s revoked at %s; the relay closes its connections within a second or two", a.ID, a.Tenant, a.RevokedAt.UTC().Format(time.RFC3339))
			})
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (kept in the audit trail and told to the agent)")
	return cmd
}

func (x *ctl) agentDrain() *cobra.Command {
	var message string
	cmd := &cobra.Command{
		Use:   "drain ID",
		Short: "Tell an agent's sessions to go away: no new streams there, it reconnects",
		Args:  cli.Args("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return x.act(cmd, "POST", "/api/v1/agents/"+url.PathEscape(args[0])+"/drain", map[string]string{"message": message}, func(raw json.RawMessage) {
				var d struct{ Sessions int }
				json.Unmarshal(raw, &d)
				say(cmd, "agent %s: %d session(s) told to drain; it reconnects and streams in flight continue", args[0], d.Sessions)
			})
		},
	}
	cmd.Flags().StringVar(&message, "message", "", "message for the agent's log")
	return cmd
}
