package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tetherhq/tether/cmd/internal/cli"
)

type backendInfo struct {
	Name   string `json:"name"`
	Grants []struct {
		Tenant  string `json:"tenant"`
		Service string `json:"service"`
	} `json:"grants"`
	CreatedAt time.Time `json:"created_at"`
}

func backendTable(w io.Writer, bs []backendInfo) error {
	now := time.Now()
	rows := make([][]string, len(bs))
	for i, b := range bs {
		gs := make([]string, len(b.Grants))
		for j, g := range b.Grants {
			gs[j] = g.Tenant + "/" + g.Service
		}
		rows[i] = []string{b.Name, strings.Join(gs, ","), cli.Since(b.CreatedAt, now)}
	}
	return cli.WriteTable(w, []string{"NAME", "GRANTS", "CREATED"}, rows)
}

// oneBackend prints the API's answer of one backend.
func oneBackend(w io.Writer, raw json.RawMessage) error {
	var b backendInfo
	if err := json.Unmarshal(raw, &b); err != nil {
		return err
	}
	return backendTable(w, []backendInfo{b})
}

func (x *ctl) backendCmd() *cobra.Command {
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
			body := map[string]any{"name": args[0], "grants": grants}
			return x.call(cmd, "POST", "/api/v1/backends", nil, body, func(w io.Writer, raw json.RawMessage) error {
				var res struct {
					APIKey string `json:"api_key"`
				}
				if err := json.Unmarshal(raw, &res); err != nil {
					return err
				}
				fmt.Fprintln(w, res.APIKey)
				say(cmd, "backend %s added; its API key %s is shown only once", args[0], cli.SecretWent(cmd.OutOrStdout()))
				return nil
			})
		},
	}
	add.Flags().StringSliceVar(&allow, "allow", nil, "grants, comma-separated: tenant/service, tenant, or patterns with *")
	add.Flags().StringSliceVar(&tenants, "tenants", nil, `tenants the backend may reach, all their services ("*" for every tenant); the same as --allow with tenant names`)

	show := &cobra.Command{
		Use:   "show NAME",
		Short: "Show a backend and its grants",
		Args:  cli.Args("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return x.call(cmd, "GET", "/api/v1/backends/"+url.PathEscape(args[0]), nil, nil, oneBackend)
		},
	}
	grants := func(verb, short string) *cobra.Command {
		return &cobra.Command{
			Use:   verb + " NAME GRANT...",
			Short: short,
			Long:  short + ".\n\n" + cli.GrantHelp,
			Args:  cli.Args("NAME", "GRANT..."),
			RunE: func(cmd *cobra.Command, args []string) error {
				return x.call(cmd, "POST", "/api/v1/backends/"+url.PathEscape(args[0])+"/"+verb, nil, map[string][]string{"grants": args[1:]}, oneBackend)
			},
		}
	}
	remove := &cobra.Command{
		Use:   "remove NAME",
		Short: "Remove a backend: its key and certificates stop working within 2s",
		Args:  cli.Args("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return x.act(cmd, "DELETE", "/api/v1/backends/"+url.PathEscape(args[0]), nil, func(json.RawMessage) {
				say(cmd, "backend %s removed; the relay refuses its key and certificates within 2 s", args[0])
			})
		},
	}
	cert := relayHostOnly("certificate NAME --out DIR", "Write a client certificate for a backend for the TLS door",
		onRelayHost("backend certificate NAME --out DIR", "it is signed with the relay CA's key, which stays in the data directory"))
	certs := &cobra.Command{
		Use:   "certificates NAME",
		Short: "List a backend's client certificates: serial, issued, expiry, state",
		Long:  "List the client certificates issued to a backend, as the relay recorded them, newest first.\n\n" + cli.BackendCertsHelp,
		Args:  cli.Args("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return x.call(cmd, "GET", "/api/v1/backends/"+url.PathEscape(args[0])+"/certificates", nil, nil, func(w io.Writer, raw json.RawMessage) error {
				var l cli.BackendCerts
				if err := json.Unmarshal(raw, &l); err != nil {
					return err
				}
				return l.Write(w)
			})
		},
	}
	return cli.Group("backend", "Backends: the SaaS side's credentials and grants", add, x.backendList(), show,
		grants("grant", "Add grants to a backend (the relay applies them within 2s)"),
		grants("ungrant", "Remove grants from a backend (new streams they allowed are refused within 2s)"),
		remove, cert, certs, x.backendRevokeCert())
}

func (x *ctl) backendRevokeCert() *cobra.Command {
	var unrecorded bool
	c := &cobra.Command{
		Use:   "revoke-certificate NAME (SERIAL | --unrecorded)",
		Short: "Revoke a backend's client certificate: the TLS door refuses it within 2s",
		Long:  cli.BackendRevokeHelp,
		Args:  cli.Args("NAME", "[SERIAL]"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			path := "/api/v1/backends/" + url.PathEscape(name) + "/certificates/"
			switch {
			case unrecorded && len(args) == 2:
				return cli.Usagef("backend revoke-certificate takes a SERIAL or --unrecorded, not both")
			case unrecorded:
				return x.act(cmd, "DELETE", path+"unrecorded", nil, func(raw json.RawMessage) {
					var res struct{ Changed bool }
					json.Unmarshal(raw, &res)
					if res.Changed {
						say(cmd, "backend %s: the relay refuses its certificates issued before it recorded them within 2 s; those listed by backend certificates %s keep working", name, name)
					} else {
						say(cmd, "backend %s already accepts only the certificates the relay has on record; nothing changed", name)
					}
				})
			case len(args) == 1:
				return cli.Usagef("backend revoke-certificate needs a SERIAL (backend certificates %s lists them) or --unrecorded", name)
			}
			return x.act(cmd, "DELETE", path+url.PathEscape(args[1]), nil, func(raw json.RawMessage) {
				var res struct {
					Revoked struct{ Serial string }
				}
				json.Unmarshal(raw, &res)
				say(cmd, "certificate %s of backend %s revoked; the relay refuses it within 2 s", res.Revoked.Serial, name)
			})
		},
	}
	c.Flags().BoolVar(&unrecorded, "unrecorded", false, "instead of one SERIAL, refuse every certificate of the backend the relay has no record of (issued before it recorded them)")
	return c
}

func (x *ctl) backendList() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List backends with their grants",
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return x.call(cmd, "GET", "/api/v1/backends", nil, nil, func(w io.Writer, raw json.RawMessage) error {
				var res struct {
					Backends []backendInfo `json:"backends"`
				}
				if err := json.Unmarshal(raw, &res); err != nil {
					return err
				}
				return backendTable(w, res.Backends)
			})
		},
	}
}
