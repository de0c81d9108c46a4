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
	var name, tenant, role string
	var ttl time.Duration
	create := &cobra.Command{
		Use:   "create --name NAME",
		Short: "Create an admin API token for an operator (only the token on stdout, shown once)",
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if name == "" {
				return cli.Usagef("operator token create needs --name")
			}
			scope, err := admin.ParseScope(tenant, role)
			if err != nil {
				return cli.Usagef("%v", err)
			}
			return g.withAdmin(cmd, func(ctx context.Context, a *admin.Admin) error {
				tok, info, err := a.CreateOperatorToken(ctx, name, scope, ttl)
				if err != nil {
					return err
				}
				return printCreated(cmd, tok, map[string]any{"token": tok, "info": info}, func() {
					say(cmd, "operator token %s for %s, %s %s, shown only once, expires %s", info.ID, info.Name, scope, cli.SecretWent(cmd.OutOrStdout()), cli.When(info.ExpiresAt, time.Now()))
				})
			})
		},
	}
	create.Flags().StringVar(&name, "name", "", "the operator's name, which audit records give (required)")
	create.Flags().DurationVar(&ttl, "ttl", admin.DefaultOperatorTokenTTL, "how long the token stays valid")
	scopeFlags(create, &tenant, &role)

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
						rows[i] = []string{t.ID, t.Name, admin.Scope{Tenant: t.Tenant, Role: t.Role}.String(), cli.Since(t.CreatedAt, now), cli.When(t.ExpiresAt, now),
							credentialState(now, t.ExpiresAt, t.RevokedAt)}
					}
					return cli.WriteTable(w, []string{"ID", "NAME", "SCOPE", "CREATED", "EXPIRES", "STATE"}, rows)
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

	cert := certificateCmd(g)
	certCreate := certificateCmd(g)
	certCreate.Use, certCreate.Aliases, certCreate.Short = "create NAME --out DIR", nil, "Write a client certificate for an operator (operator.crt, operator.key, ca.crt) for the admin API"
	// "operator certificate NAME --out DIR", the form before list and
	// revoke, still issues one.
	cert.Use = "certificate"
	cert.Short = "Client certificates of operators: create, list, revoke"
	cert.AddCommand(certCreate, &cobra.Command{
		Use:   "list",
		Short: "List the operator certificates issued, with their scope and state",
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.withAdmin(cmd, func(ctx context.Context, a *admin.Admin) error {
				cs, err := a.OperatorCertificates(ctx)
				if err != nil {
					return err
				}
				cs = nonNil(cs)
				return cli.Print(cmd.OutOrStdout(), output(cmd), cs, func(w io.Writer) error {
					now := time.Now()
					rows := make([][]string, len(cs))
					for i, c := range cs {
						rows[i] = []string{c.Serial, c.Name, admin.Scope{Tenant: c.Tenant, Role: c.Role}.String(), cli.Since(c.CreatedAt, now), cli.When(c.NotAfter, now),
							credentialState(now, c.NotAfter, c.RevokedAt)}
					}
					return cli.WriteTable(w, []string{"SERIAL", "NAME", "SCOPE", "ISSUED", "EXPIRES", "STATE"}, rows)
				})
			})
		},
	}, &cobra.Command{
		Use:   "revoke SERIAL",
		Short: "Revoke an operator certificate: refused from the next request, its browser sessions end",
		Args:  cli.Args("SERIAL"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withAdmin(cmd, func(ctx context.Context, a *admin.Admin) error {
				c, err := a.RevokeOperatorCertificate(ctx, args[0])
				if err != nil {
					return err
				}
				say(cmd, "operator certificate %s of %s revoked; the admin API refuses it, and ends its browser sessions, from the next request", c.Serial, c.Name)
				return nil
			})
		},
	})

	token := cli.Group("token", "Admin API tokens of operators", create, list, revoke)
	return cli.Group("operator", "Operators' credentials for the admin API", token, cert)
}

// scopeFlags adds --tenant and --role, the scope of a new operator
// credential, to cmd.
func scopeFlags(cmd *cobra.Command, tenant, role *string) {
	cmd.Flags().StringVar(tenant, "tenant", "", "scope the credential to this tenant (default: every tenant, a vendor operator)")
	cmd.Flags().StringVar(role, "role", "", "with --tenant: admin or viewer (default viewer)")
}

// credentialState says whether a credential is valid, expired or revoked.
func credentialState(now, expires time.Time, revoked *time.Time) string {
	switch {
	case revoked != nil:
		return "revoked " + cli.Since(*revoked, now)
	case !now.Before(expires):
		return "expired"
	}
	return "valid"
}

// certificateCmd issues an operator certificate: operator certificate
// create, and the older operator certificate NAME.
func certificateCmd(g *globals) *cobra.Command {
	var out, tenant, role string
	var lifetime time.Duration
	cert := &cobra.Command{
		Use:     "certificate NAME --out DIR",
		Aliases: []string{"cert"},
		Args:    cli.Args("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "" {
				return cli.Usagef("%s needs --out DIR", cli.Name(cmd))
			}
			scope, err := admin.ParseScope(tenant, role)
			if err != nil {
				return cli.Usagef("%v", err)
			}
			return g.withAdmin(cmd, func(ctx context.Context, a *admin.Admin) error {
				c, err := a.IssueOperatorCertificate(ctx, args[0], scope, lifetime)
				if err != nil {
					return err
				}
				if err := c.WriteFiles(out); err != nil {
					return err
				}
				say(cmd, "wrote %s: operator.crt and operator.key (identity %s, %s, serial %s, valid until %s) and ca.crt",
					out, c.Identity, scope, c.Serial, c.NotAfter.UTC().Format(time.RFC3339))
				return nil
			})
		},
	}
	cert.Flags().StringVar(&out, "out", "", "directory to write operator.crt, operator.key (0600) and ca.crt to (required)")
	cert.Flags().DurationVar(&lifetime, "lifetime", admin.DefaultOperatorTokenTTL, "validity of the certificate")
	scopeFlags(cert, &tenant, &role)
	return cert
}
