package main

import (
	"context"
	"encoding/json"
	"io"
	"slices"
	"time"

	"github.com/spf13/cobra"

	"github.com/tetherhq/tether/cmd/internal/cli"
	"github.com/tetherhq/tether/relay/admin"
)

func auditCmd(g *globals) *cobra.Command {
	var f admin.AuditFilter
	var since, until string
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Show the audit trail, oldest first (-o json: one record a line)",
		Long: `Show the audit trail: the newest records that match (--limit), oldest
first, like a log. -o json prints one JSON record a line; -o yaml a list.
--request ID shows the records of one request id (from a refusal's
Tether-Request-Id, the relay's log or the agent's access log).`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			now := time.Now()
			var err error
			if f.Since, err = admin.ParseWhen(since, now); err != nil {
				return cli.Usagef("--since: %v", err)
			}
			if f.Until, err = admin.ParseWhen(until, now); err != nil {
				return cli.Usagef("--until: %v", err)
			}
			if f.Request != "" {
				if err := admin.CheckRequestID(f.Request); err != nil {
					return cli.Usagef("--request: %v", err)
				}
			}
			f.NewestFirst = true
			return g.withAdmin(cmd, func(ctx context.Context, a *admin.Admin) error {
				recs, err := a.Audit(ctx, f)
				if err != nil {
					return err
				}
				slices.Reverse(recs) // oldest first, like a log
				recs = nonNil(recs)
				w := cmd.OutOrStdout()
				if output(cmd) == cli.JSON {
					for _, r := range recs {
						if err := cli.JSONLine(w, r); err != nil {
							return err
						}
					}
					return nil
				}
				return cli.Print(w, output(cmd), recs, func(w io.Writer) error {
					rows := make([][]string, len(recs))
					for i, r := range recs {
						detail := ""
						if r.Detail != nil {
							b, _ := json.Marshal(r.Detail)
							detail = string(b)
						}
						rows[i] = []string{cli.Timestamp(r.At), r.Kind, r.Outcome, r.Tenant, r.Agent, r.Backend, r.Actor, detail}
					}
					return cli.WriteTable(w, []string{"TIME", "KIND", "OUTCOME", "TENANT", "AGENT", "BACKEND", "ACTOR", "DETAIL"}, rows)
				})
			})
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&f.Tenant, "tenant", "", "only this tenant")
	fs.StringVar(&f.Agent, "agent", "", "only this agent")
	fs.StringVar(&f.Backend, "backend", "", "only this backend")
	fs.StringVar(&f.Kind, "kind", "", `only this kind (e.g. stream, agent.revoke), or a prefix ending in "." (agent.)`)
	fs.StringVar(&f.Request, "request", "", "only the records of this request id (from a refusal, the relay's log or the agent's access log)")
	fs.StringVar(&since, "since", "", "from this time (RFC 3339) or this long ago (e.g. 2h)")
	fs.StringVar(&until, "until", "", "before this time (RFC 3339) or this long ago")
	fs.IntVar(&f.Limit, "limit", 1000, "at most this many records (the newest)")
	return cmd
}
