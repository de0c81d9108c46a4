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

func backendCmd(g *globals) *cobra.Command {
	var allow, tenants []string
	add := &cobra.Command{
		Use:   "add NAME --allow GRANT,...",
		Short: "Add a backend with its grants (only its API key on stdout, shown once)",
		Long:  "Add a backend credential with its grants and print its API key, once.\n\n" + cli.GrantHelp,
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
					say(cmd, "backend %s added; its API key %s is shown only once", args[0], cli.SecretWent(cmd.OutOrStdout()))
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
		Long:  "Add grants to a backend; a running relay applies them within 2 s.\n\n" + cli.GrantHelp,
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
				say(cmd, "wrote %s: backend.crt and backend.key (identity %s, serial %s, valid until %s) and ca.crt", out, c.Identity, c.Serial, c.NotAfter.UTC().Format(time.RFC3339))
				say(cmd, "list the backend's certificates with: backend certificates %s; revoke this one with: backend revoke-certificate %s %s", args[0], args[0], c.Serial)
				return nil
			})
		},
	}
	cert.Flags().StringVar(&out, "out", "", "directory to write backend.crt, backend.key (0600) and ca.crt to (required)")
	cert.Flags().DurationVar(&lifetime, "lifetime", 90*24*time.Hour, "validity of the certificate")
	certs := &cobra.Command{
		Use:   "certificates NAME",
		Short: "List a backend's client certificates: serial, issued, expiry, state",
		Long:  "List the client certificates issued to a backend, as the relay recorded them, newest first.\n\n" + cli.BackendCertsHelp,
		Args:  cli.Args("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withAdmin(cmd, func(ctx context.Context, a *admin.Admin) error {
				l, err := a.BackendCertificates(ctx, args[0])
				if err != nil {
					return err
				}
				l.Certificates = nonNil(l.Certificates)
				return cli.Print(cmd.OutOrStdout(), output(cmd), l, func(w io.Writer) error { return backendCerts(l).Write(w) })
			})
		},
	}
	return cli.Group("backend", "Backends: the SaaS side's credentials and grants", add, list, show, grant, ungrant, remove, cert, certs, backendRevokeCert(g))
}

func backendRevokeCert(g *globals) *cobra.Command {
	var unrecorded bool
	c := &cobra.Command{
		Use:   "revoke-certificate NAME (SERIAL | --unrecorded)",
		Short: "Revoke a backend's client certificate: the TLS door refuses it within 2s",
		Long:  cli.BackendRevokeHelp,
		Args:  cli.Args("NAME", "[SERIAL]"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			switch {
			case unrecorded && len(args) == 2:
				return cli.Usagef("backend revoke-certificate takes a SERIAL or --unrecorded, not both")
			case !unrecorded && len(args) == 1:
				return cli.Usagef("backend revoke-certificate needs a SERIAL (backend certificates %s lists them) or --unrecorded", name)
			}
			return g.withAdmin(cmd, func(ctx context.Context, a *admin.Admin) error {
				if unrecorded {
					changed, err := a.RevokeUnrecordedBackendCertificates(ctx, name)
					if err != nil {
						return err
					}
					if changed {
						say(cmd, "backend %s: a running relay refuses its certificates issued before it recorded them within 2 s; those listed by backend certificates %s keep working", name, name)
					} else {
						say(cmd, "backend %s already accepts only the certificates the relay has on record; nothing changed", name)
					}
					return nil
				}
				rc, err := a.RevokeBackendCertificate(ctx, name, args[1])
				if err != nil {
					return err
				}
				say(cmd, "certificate %s of backend %s revoked; a running relay refuses it within 2 s", rc.Serial, name)
				return nil
			})
		},
	}
	c.Flags().BoolVar(&unrecorded, "unrecorded", false, "instead of one SERIAL, refuse every certificate of the backend the relay has no record of (issued before it recorded them)")
	return c
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

// backendCerts is l as the commands of both binaries print it.
func backendCerts(l admin.BackendCertList) cli.BackendCerts {
	out := cli.BackendCerts{Backend: l.Backend, AcceptsUnrecorded: l.AcceptsUnrecorded, Certificates: make([]cli.BackendCert, len(l.Certificates))}
	for i, c := range l.Certificates {
		out.Certificates[i] = cli.BackendCert{Serial: c.Serial, CreatedAt: c.CreatedAt, NotAfter: c.NotAfter, Expired: c.Expired}
	}
	return out
}
