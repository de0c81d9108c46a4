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

type tokenInfo struct {
	ID        string    `json:"id"`
	Tenant    string    `json:"tenant"`
	ExpiresAt time.Time `json:"expires_at"`
	MaxUses   int       `json:"max_uses"`
	Uses      int       `json:"uses"`
}

func (x *ctl) tokenCmd() *cobra.Command {
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
			body := map[string]any{"tenant": tenant, "uses": uses, "ttl": ttl.String()}
			return x.call(cmd, "POST", "/api/v1/tokens", nil, body, func(w io.Writer, raw json.RawMessage) error {
				var res struct {
					Token string    `json:"token"`
					Info  tokenInfo `json:"info"`
				}
				if err := json.Unmarshal(raw, &res); err != nil {
					return err
				}
				fmt.Fprintln(w, res.Token)
				say(cmd, "join token %s for tenant %s: %d use(s), expires %s", res.Info.ID, res.Info.Tenant, res.Info.MaxUses, cli.When(res.Info.ExpiresAt, time.Now()))
				return nil
			})
		},
	}
	create.Flags().StringVar(&tenant, "tenant", "", "tenant the token enrols agents into (required)")
	create.Flags().DurationVar(&ttl, "ttl", time.Hour, "how long the token stays valid")
	create.Flags().IntVar(&uses, "uses", 1, "how many agents the token may enrol")

	revoke := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a join token: it enrols no more agents",
		Args:  cli.Args("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return x.act(cmd, "DELETE", "/api/v1/tokens/"+url.PathEscape(args[0]), nil, func(json.RawMessage) {
				say(cmd, "join token %s revoked; agents it enrolled are not affected", args[0])
			})
		},
	}
	return cli.Group("token", "Join tokens that enrol agents", create, x.tokenList(), revoke)
}

func (x *ctl) tokenList() *cobra.Command {
	var tenant string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List join tokens (without their secrets)",
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q := url.Values{}
			if tenant != "" {
				q.Set("tenant", tenant)
			}
			return x.call(cmd, "GET", "/api/v1/tokens", q, nil, func(w io.Writer, raw json.RawMessage) error {
				var res struct {
					Tokens []tokenInfo `json:"tokens"`
				}
				if err := json.Unmarshal(raw, &res); err != nil {
					return err
				}
				now := time.Now()
				rows := make([][]string, len(res.Tokens))
				for i, t := range res.Tokens {
					rows[i] = []string{t.ID, t.Tenant, fmt.Sprintf("%d/%d", t.Uses, t.MaxUses), cli.When(t.ExpiresAt, now)}
				}
				return cli.WriteTable(w, []string{"ID", "TENANT", "USES", "EXPIRES"}, rows)
			})
		},
	}
	cmd.Flags().StringVar(&tenant, "tenant", "", "only this tenant's tokens")
	return cmd
}
