package main

import (
	"context"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tetherhq/tether/cmd/internal/cli"
	"github.com/tetherhq/tether/relay/admin"
)

const grantHelp = `A grant is tenant/service, a tenant alone (all its services), or a
pattern with "*" (acme/postgres, globex, */metrics).`

func backendCmd(g *globals) *cobra.Command {
	var allow, tenants []string
	add := &cobra.Command{
		Use:   "add NAME --allow GRANT,...",
		Short: "Add a backend with its grants (only its API key on stdout, shown once)",
		Long:  "Add a backend credential with its grants and print its API key, once.\n\n" + grantHelp,
		Args:  cli.Args("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			grants := cleanList(slices.Concat(allow, tenants))
			if len(grants) == 0 {
				return cli.Usagef(`backend add needs --allow tenant/service,… (or --tenants a,b, or "*")`)
			}
			return g.withAdmin(cmd, func(ctx context.Context, a *admin.Admin) error {
				key, err := a.AddBackend(ctx, args[0], grants)
				if err != nil {
					return err
				}
				return printCreated(cmd, key, map[string]any{"name": args[0], "api_key": key}, func() {
					say(cmd, "backend %s added; its API key (above) is shown only once", args[0])
				})
			})
		},
	}
	add.Flags().StringSliceVar(&allow, "allow", nil, "grants, comma-separated: tenant/service, tenant, or patterns with *")
	add.Flags().StringSliceVar(&tenants, "tenants", nil, `tenants the backend may reach, all their services ("*" for every tenant); the same as --allow with tenant names`)

	list := &cobra.Command{
		Use:   "list",
		Short: "List backends with their grants",
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.withAdmin(cmd, func(ctx context.Context, a *admin.Admin) error {
				bs, err := a.Backends(ctx)
				if err != nil {
					return err
				}
				if bs == nil {
					bs = []admin.BackendInfo{}
				}
				return cli.Print(cmd.OutOrStdout(), output(cmd), bs, func(w io.Writer) error { return backendTable(w, bs) })
			})
		},
	}
	show := &cobra.Command{
		Use:   "show NAME",
		Short: "Show a backend and its grants",
		Args:  cli.Args("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withAdmin(cmd, func(ctx context.Context, a *admin.Admin) error {
				b, err := findBackend(ctx, a, args[0])
				if err != nil {
					return err
				}
				return cli.Print(cmd.OutOrStdout(), output(cmd), b, func(w io.Writer) error { return backendTable(w, []admin.BackendInfo{b}) })
			})
		},
	}
	grant := &cobra.Command{
		Use:   "grant NAME GRANT...",
		Short: "Add grants to a backend (a running relay applies them within 2s)",
		Long:  "Add grants to a backend; a running relay applies them within 2 s.\n\n" + grantHelp,
		Args:  cli.Args("NAME", "GRANT..."),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.changeGrants(cmd, args[0], args[1:], (*admin.Admin).Grant)
		},
	}
	ungrant := &cobra.Command{
		Use:   "ungrant NAME GRANT...",
		Short: "Remove grants from a backend (new streams they allowed are refused within 2s)",
		Args:  cli.Args("NAME", "GRANT..."),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.changeGrants(cmd, args[0], args[1:], (*admin.Admin).Ungrant)
		},
	}
	remove := &cobra.Command{
		Use:   "remove NAME",
		Short: "Remove a backend: its key and certificates stop working within 2s",
		Args:  cli.Args("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withAdmin(cmd, func(ctx context.Context, a *admin.Admin) error {
				if err := a.RemoveBackend(ctx, args[0]); err != nil {
					return err
				}
				say(cmd, "backend %s removed; a running relay refuses its key and certificates within 2 s", args[0])
				return nil
			})
		},
	}
	var out string
	var lifetime time.Duration
	cert := &cobra.Command{
		Use:     "certificate NAME --out DIR",
		Aliases: []string{"cert"},
		Short:   "Write a client certificate for a backend (backend.crt, backend.key, ca.crt) for the TLS door",
		Args:    cli.Args("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "" {
				return cli.Usagef("backend certificate needs --out DIR")
			}
			return g.withAdmin(cmd, func(ctx context.Context, a *admin.Admin) error {
				c, err := a.IssueBackendCertificate(ctx, args[0], lifetime)
				if err != nil {
					return err
				}
				if err := c.WriteFiles(out); err != nil {
					return err
				}
				say(cmd, "wrote %s: backend.crt and backend.key (identity %s, valid until %s) and ca.crt", out, c.Identity, c.NotAfter.UTC().Format(time.RFC3339))
				return nil
			})
		},
	}
	cert.Flags().StringVar(&out, "out", "", "directory to write backend.crt, backend.key (0600) and ca.crt to (required)")
	cert.Flags().DurationVar(&lifetime, "lifetime", 90*24*time.Hour, "validity of the certificate")
	return cli.Group("backend", "Backends: the SaaS side's credentials and grants", add, list, show, grant, ungrant, remove, cert)
}

func (g *globals) changeGrants(cmd *cobra.Command, name string, grants []string, apply func(*admin.Admin, context.Context, string, []string) error) error {
	return g.withAdmin(cmd, func(ctx context.Context, a *admin.Admin) error {
		if err := apply(a, ctx, name, grants); err != nil {
			return err
		}
		b, err := findBackend(ctx, a, name)
		if err != nil {
			return err
		}
		return cli.Print(cmd.OutOrStdout(), output(cmd), b, func(w io.Writer) error { return backendTable(w, []admin.BackendInfo{b}) })
	})
}

func findBackend(ctx context.Context, a *admin.Admin, name string) (admin.BackendInfo, error) {
	bs, err := a.Backends(ctx)
	if err != nil {
		return admin.BackendInfo{}, err
	}
	i := slices.IndexFunc(bs, func(b admin.BackendInfo) bool { return b.Name == name })
	if i < 0 {
		return admin.BackendInfo{}, admin.Errorf(admin.ErrNotFound, "no backend %q (list them with: tether-relay backend list)", name)
	}
	return bs[i], nil
}

func backendTable(w io.Writer, bs []admin.BackendInfo) error {
	now := time.Now()
	rows := make([][]string, len(bs))
	for i, b := range bs {
		gs := make([]string, len(b.Grants))
		for j, gr := range b.Grants {
			gs[j] = gr.String()
		}
		rows[i] = []string{b.Name, strings.Join(gs, ","), cli.Since(b.CreatedAt, now)}
	}
	return cli.WriteTable(w, []string{"NAME", "GRANTS", "CREATED"}, rows)
}
