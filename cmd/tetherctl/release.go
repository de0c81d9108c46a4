package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/tetherhq/tether/cmd/internal/cli"
)

func (x *ctl) releaseCmd() *cobra.Command {
	list := &cobra.Command{
		Use:   "list",
		Short: "List published releases",
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return x.call(cmd, "GET", "/api/v1/releases", nil, nil, func(w io.Writer, raw json.RawMessage) error {
				var res struct {
					Releases []struct {
						Version, OS, Arch, Channel, SHA256 string
						Size                               int64
						Expires                            time.Time
						KeyID                              string    `json:"key_id"`
						PublishedAt                        time.Time `json:"published_at"`
					}
				}
				if err := json.Unmarshal(raw, &res); err != nil {
					return err
				}
				now := time.Now()
				rows := make([][]string, len(res.Releases))
				for i, r := range res.Releases {
					rows[i] = []string{r.Version, r.OS + "/" + r.Arch, r.Channel, cli.Bytes(uint64(max(r.Size, 0))), r.KeyID, cli.When(r.Expires, now), cli.Since(r.PublishedAt, now)}
				}
				return cli.WriteTable(w, []string{"VERSION", "PLATFORM", "CHANNEL", "SIZE", "KEY", "EXPIRES", "PUBLISHED"}, rows)
			})
		},
	}

	var force bool
	remove := &cobra.Command{
		Use:   "remove VERSION [--force]",
		Short: "Remove a release (every platform and channel of VERSION) from the store and the relays' data directories",
		Long:  cli.ReleaseRemoveHelp,
		Args:  cli.Args("VERSION"),
		RunE: func(cmd *cobra.Command, args []string) error {
			var q url.Values
			if force {
				q = url.Values{"force": {"true"}}
			}
			return x.call(cmd, "DELETE", "/api/v1/releases/"+url.PathEscape(args[0]), q, nil, func(io.Writer, json.RawMessage) error { return nil }, func(raw json.RawMessage) {
				var res struct {
					Version            string
					Releases           []json.RawMessage
					BlobsRemoved       int   `json:"blobs_removed"`
					BytesFreed         int64 `json:"bytes_freed"`
					AgentUpdatesPruned int64 `json:"agent_updates_pruned"`
				}
				json.Unmarshal(raw, &res)
				say(cmd, "%s", cli.RemovedRelease(res.Version, len(res.Releases), res.BlobsRemoved, res.BytesFreed, res.AgentUpdatesPruned))
			})
		},
	}
	remove.Flags().BoolVar(&force, "force", false, "remove it even while agents were offered it or were downloading it in the last 15 minutes (never while a rollout offers it)")

	var ro rolloutFlags
	rollout := &cobra.Command{
		Use:   "rollout VERSION (--percent N | --tenants a,b | --agents id,...)",
		Short: "Roll a published version out to agents (it supersedes the active rollout)",
		Args:  cli.Args("VERSION"),
		RunE: func(cmd *cobra.Command, args []string) error {
			body := map[string]any{"version": args[0], "percent": ro.percent, "tenants": cleanList(ro.tenants),
				"agents": cleanList(ro.agents), "halt_at": ro.haltAt, "batch": ro.batch}
			return x.act(cmd, "POST", "/api/v1/rollouts", body, func(raw json.RawMessage) {
				var res struct {
					Rollout struct {
						ID      int64
						Version string
					}
					Warnings []string
				}
				json.Unmarshal(raw, &res)
				for _, w := range res.Warnings {
					say(cmd, "warning: %s", w)
				}
				say(cmd, "rollout %d of %s started; it supersedes any earlier rollout (tetherctl release status)", res.Rollout.ID, res.Rollout.Version)
			})
		},
	}
	ro.add(rollout.Flags())

	var sf cli.ReleaseStatusFlags
	status := &cobra.Command{
		Use:   "status",
		Short: "Show rollouts, agents' updates counted by state, and a page of them, newest first (--cursor for the next)",
		Long:  cli.ReleaseStatusHelp,
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var next string
			var shown int
			var counts map[string]int
			err := x.call(cmd, "GET", "/api/v1/rollouts", sf.Query(), nil, func(w io.Writer, raw json.RawMessage) error {
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
					Counts map[string]int
				}
				if err := json.Unmarshal(raw, &res); err != nil {
					return err
				}
				now := time.Now()
				var rows [][]string
				for _, r := range res.Rollouts {
					rows = append(rows, []string{strconv.FormatInt(r.ID, 10), r.Version, rolloutTarget(r.Percent, r.Tenants, r.Agents),
						strconv.FormatFloat(r.HaltAt, 'g', -1, 64), r.State, cli.Since(r.CreatedAt, now), r.Reason})
				}
				if err := cli.WriteTable(w, []string{"ROLLOUT", "VERSION", "TO", "HALT AT", "STATE", "STARTED", "REASON"}, rows); err != nil {
					return err
				}
				fmt.Fprintln(w)
				if err := sf.WriteCounts(w, res.Counts); err != nil {
					return err
				}
				fmt.Fprintln(w)
				rows = nil
				for _, a := range res.Agents {
					rows = append(rows, []string{a.Agent, a.Tenant, a.From, a.Version, a.State, cli.Since(a.UpdatedAt, now), strings.TrimSpace(a.Reason + " " + a.Message)})
				}
				return cli.WriteTable(w, []string{"AGENT", "TENANT", "FROM", "VERSION", "STATE", "UPDATED", "REASON"}, rows)
			}, func(raw json.RawMessage) {
				var res struct {
					Agents     []json.RawMessage `json:"agents"`
					Counts     map[string]int    `json:"counts"`
					NextCursor string            `json:"next_cursor"`
				}
				json.Unmarshal(raw, &res)
				next, shown, counts = res.NextCursor, len(res.Agents), res.Counts
			})
			if err == nil && next != "" {
				say(cmd, "%s", sf.More("tetherctl", next, shown, counts))
			}
			return err
		},
	}
	sf.Add(status.Flags())

	signing := "signing stays with the vendor's key, offline, and publishing with the relay's host (nothing signed passes through the API)"
	return cli.Group("release", "Agent releases: rollouts and where every agent stands",
		relayHostOnly("keygen --out DIR", "Make a release signing key pair", onRelayHost("release keygen --out DIR", signing)),
		relayHostOnly("sign --file BIN ... --key KEYFILE --out DIR", "Sign an agent binary", onRelayHost("release sign", signing)),
		relayHostOnly("publish --signed DIR", "Publish a signed release", onRelayHost("release publish --signed DIR", signing)),
		list, remove, rollout, status)
}

// rolloutFlags are release rollout's, in both binaries.
type rolloutFlags struct {
	percent, batch  int
	tenants, agents []string
	haltAt          float64
}

func (r *rolloutFlags) add(fs *pflag.FlagSet) {
	fs.IntVar(&r.percent, "percent", 0, "this percentage of all agents (1-100)")
	fs.StringSliceVar(&r.tenants, "tenants", nil, "the agents of these tenants (comma-separated)")
	fs.StringSliceVar(&r.agents, "agents", nil, "these agents (comma-separated ids)")
	fs.Float64Var(&r.haltAt, "halt-at", 0, "halt when this fraction of the agents offered the release fail (0: never)")
	fs.IntVar(&r.batch, "batch", 0, "at most this many agents updating at once (0: no limit)")
}

// rolloutTarget says which agents a rollout selects.
func rolloutTarget(percent int, tenants, agents []string) string {
	switch {
	case len(tenants) > 0:
		return "tenants " + strings.Join(tenants, ",")
	case len(agents) > 0:
		return "agents " + strings.Join(agents, ",")
	}
	return fmt.Sprintf("%d%%", percent)
}

// operatorCmd: operators' credentials are made on the relay host; the
// certificates issued can be listed and revoked through the admin API
// (by vendor operators).
func (x *ctl) operatorCmd() *cobra.Command {
	why := "operators' credentials are made where the relay's data directory is"
	token := cli.Group("token", "Admin API tokens of operators [on the relay host]",
		relayHostOnly("create --name NAME", "Create an admin API token for an operator", onRelayHost("operator token create --name NAME", why)),
		relayHostOnly("list", "List operator tokens", onRelayHost("operator token list", why)),
		relayHostOnly("revoke ID", "Revoke an operator token", onRelayHost("operator token revoke ID", why)))
	list := &cobra.Command{
		Use:   "list",
		Short: "List the operator certificates issued, with their scope and state",
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return x.call(cmd, "GET", "/api/v1/operator-certificates", nil, nil, func(w io.Writer, raw json.RawMessage) error {
				var res struct {
					Certificates []struct {
						Serial, Name, Tenant, Role string
						NotAfter                   time.Time  `json:"not_after"`
						RevokedAt                  *time.Time `json:"revoked_at"`
					}
				}
				if err := json.Unmarshal(raw, &res); err != nil {
					return err
				}
				now := time.Now()
				rows := make([][]string, len(res.Certificates))
				for i, c := range res.Certificates {
					state := "valid"
					switch {
					case c.RevokedAt != nil:
						state = "revoked " + cli.Since(*c.RevokedAt, now)
					case !now.Before(c.NotAfter):
						state = "expired"
					}
					scope := c.Role
					if c.Tenant != "" {
						scope += " of tenant " + c.Tenant
					}
					rows[i] = []string{c.Serial, c.Name, scope, cli.When(c.NotAfter, now), state}
				}
				return cli.WriteTable(w, []string{"SERIAL", "NAME", "SCOPE", "EXPIRES", "STATE"}, rows)
			})
		},
	}
	revoke := &cobra.Command{
		Use:   "revoke SERIAL",
		Short: "Revoke an operator certificate: refused from the next request, its browser sessions end",
		Args:  cli.Args("SERIAL"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return x.act(cmd, "POST", "/api/v1/operator-certificates/"+url.PathEscape(args[0])+"/revoke", struct{}{}, func(json.RawMessage) {
				say(cmd, "operator certificate %s revoked; the relay refuses it, and ends its browser sessions, from the next request", args[0])
			})
		},
	}
	cert := cli.Group("certificate", "Client certificates of operators: create [on the relay host], list, revoke",
		relayHostOnly("create NAME --out DIR", "Write a client certificate for an operator",
			onRelayHost("operator certificate create NAME --out DIR", "it is signed with the relay CA's key, which stays in the data directory")),
		list, revoke)
	return cli.Group("operator", "Operators' credentials for the admin API", token, cert)
}

func caCmd() *cobra.Command {
	why := "the CA's keys and roots are in the relay's data directory"
	return cli.Group("ca", "The relay's CA: status and rotation [on the relay host]",
		relayHostOnly("status", "Show the CA's roots", onRelayHost("ca status", why)),
		relayHostOnly("rotate", "Add a new root", onRelayHost("ca rotate", why)),
		relayHostOnly("renew-now", "Ask agents on the old root to renew at once", onRelayHost("ca renew-now", why)),
		relayHostOnly("retire", "End a rotation", onRelayHost("ca retire", why)),
		relayHostOnly("export", "Write the CA's active roots (PEM)", onRelayHost("ca export --out FILE", why)))
}

// backupCmd is tether-relay backup, which runs on the relay's host only:
// a backup holds the CA's private keys, which the admin API never sends.
func backupCmd() *cobra.Command {
	return relayHostOnly("backup DEST", "Back up the data directory [on the relay host]",
		onRelayHost("backup DEST", "a backup holds the CA's private keys, which never leave the relay's host: the admin API does not send them"))
}

// relayHostOnly is a command that needs the relay's data directory.
func relayHostOnly(use, short, why string) *cobra.Command {
	return cli.UnavailableCommand(use, short, "tether-relay only", why)
}
