package main

import (
	"context"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/tetherhq/tether/cmd/internal/cli"
	"github.com/tetherhq/tether/relay/admin"
)

// operatorCmd manages the credentials of the admin API.
func operatorCmd(g *globals) *cobra.Command {
	var name string
	var ttl time.Duration
	create := &cobra.Command{
		Use:   "create --name NAME",
		Short: "Create an admin API token for an operator (only the token on stdout, shown once)",
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if name == "" {
				return cli.Usagef("operator token create needs --name")
			}
			return g.withAdmin(cmd, func(ctx context.Context, a *admin.Admin) error {
				tok, info, err := a.CreateOperatorToken(ctx, name, ttl)
				if err != nil {
					return err
				}
				return printCreated(cmd, tok, map[string]any{"token": tok, "info": info}, func() {
					say(cmd, "operator token %s for %s (above; shown only once), expires %s", info.ID, info.Name, cli.When(info.ExpiresAt, time.Now()))
				})
			})
		},
	}
	create.Flags().StringVar(&name, "name", "", "the operator's name, which audit records give (required)")
	create.Flags().DurationVar(&ttl, "ttl", admin.DefaultOperatorTokenTTL, "how long the token stays valid")

	list := &cobra.Command{
		Use:   "list",
		Short: "List operator tokens with their state (valid, expired, revoked)",
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.withAdmin(cmd, func(ctx context.Context, a *admin.Admin) error {
				ts, err := a.OperatorTokens(ctx)
				if err != nil {
					return err
				}
				ts = nonNil(ts)
				return cli.Print(cmd.OutOrStdout(), output(cmd), ts, func(w io.Writer) error {
					now := time.Now()
					rows := make([][]string, len(ts))
					for i, t := range ts {
						state := "valid"
						switch {
						case t.RevokedAt != nil:
							state = "revoked " + cli.Since(*t.RevokedAt, now)
						case !now.Before(t.ExpiresAt):
							state = "expired"
						}
						rows[i] = []string{t.ID, t.Name, cli.Since(t.CreatedAt, now), cli.When(t.ExpiresAt, now), state}
					}
					return cli.WriteTable(w, []string{"ID", "NAME", "CREATED", "EXPIRES", "STATE"}, rows)
				})
			})
		},
	}
	revoke := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke an operator token: the admin API refuses it from the next request",
		Args:  cli.Args("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withAdmin(cmd, func(ctx context.Context, a *admin.Admin) error {
				info, err := a.RevokeOperatorToken(ctx, args[0])
				if err != nil {
					return err
				}
				say(cmd, "operator token %s of %s revoked; the admin API refuses it from the next request", info.ID, info.Name)
				return nil
			})
		},
	}

	var out string
	var lifetime time.Duration
	cert := &cobra.Command{
		Use:     "certificate NAME --out DIR",
		Aliases: []string{"cert"},
		Short:   "Write a client certificate for an operator (operator.crt, operator.key, ca.crt) for the admin API",
		Args:    cli.Args("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "" {
				return cli.Usagef("operator certificate needs --out DIR")
			}
			return g.withAdmin(cmd, func(ctx context.Context, a *admin.Admin) error {
				c, err := a.IssueOperatorCertificate(args[0], lifetime)
				if err != nil {
					return err
				}
				if err := c.WriteFiles(out); err != nil {
					return err
				}
				say(cmd, "wrote %s: operator.crt and operator.key (identity %s, valid until %s) and ca.crt", out, c.Identity, c.NotAfter.UTC().Format(time.RFC3339))
				return nil
			})
		},
	}
	cert.Flags().StringVar(&out, "out", "", "directory to write operator.crt, operator.key (0600) and ca.crt to (required)")
	cert.Flags().DurationVar(&lifetime, "lifetime", admin.DefaultOperatorTokenTTL, "validity of the certificate")

	token := cli.Group("token", "Admin API tokens of operators", create, list, revoke)
	return cli.Group("operator", "Operators' credentials for the admin API", token, cert)
}
