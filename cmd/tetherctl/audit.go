package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/url"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/tetherhq/tether/cmd/internal/cli"
)

func (x *ctl) auditCmd() *cobra.Command {
	var tenant, agent, backend, kind, request, since, until, cursor string
	var limit int
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Show audit records, newest first, a page at a time (--cursor for the next)",
		Long: `Show audit records, newest first, a page (--limit) at a time: after a full
page, the --cursor of the next is printed on stderr.

--request ID shows the relay's records of one request: the id in a
refusal's Tether-Request-Id header, in the Go Dialer's error, in the
relay's log, or in the access log of the tenant's agent (tether-agent
access-log), so one id finds a stream or a refusal on both sides.`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q := url.Values{}
			for k, v := range map[string]string{"tenant": tenant, "agent": agent, "backend": backend, "kind": kind, "request": request, "since": since, "until": until, "cursor": cursor} {
				if v != "" {
					q.Set(k, v)
				}
			}
			if limit != 0 {
				q.Set("limit", strconv.Itoa(limit))
			}
			var next string
			err := x.call(cmd, "GET", "/api/v1/audit", q, nil, func(w io.Writer, raw json.RawMessage) error {
				var res struct {
					Records []struct {
						At      time.Time       `json:"at"`
						Kind    string          `json:"kind"`
						Outcome string          `json:"outcome"`
						Tenant  string          `json:"tenant"`
						Agent   string          `json:"agent"`
						Backend string          `json:"backend"`
						Actor   string          `json:"actor"`
						Detail  json.RawMessage `json:"detail"`
					} `json:"records"`
				}
				if err := json.Unmarshal(raw, &res); err != nil {
					return err
				}
				rows := make([][]string, len(res.Records))
				for i, r := range res.Records {
					// The API indents its answer; a table cell holds
					// the detail on one line, as tether-relay audit
					// prints it.
					var compact bytes.Buffer
					if len(r.Detail) > 0 {
						if err := json.Compact(&compact, r.Detail); err != nil {
							return err
						}
					}
					detail := compact.String()
					if detail == "null" {
						detail = ""
					}
					rows[i] = []string{cli.Timestamp(r.At), r.Kind, r.Outcome, r.Tenant, r.Agent, r.Backend, r.Actor, detail}
				}
				return cli.WriteTable(w, []string{"TIME", "KIND", "OUTCOME", "TENANT", "AGENT", "BACKEND", "ACTOR", "DETAIL"}, rows)
			}, func(raw json.RawMessage) {
				var res struct {
					NextCursor string `json:"next_cursor"`
				}
				json.Unmarshal(raw, &res)
				next = res.NextCursor
			})
			if err == nil && next != "" {
				say(cmd, "more: tetherctl audit --cursor %s (with the same filters)", next)
			}
			return err
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&tenant, "tenant", "", "only this tenant")
	fs.StringVar(&agent, "agent", "", "only this agent")
	fs.StringVar(&backend, "backend", "", "only this backend")
	fs.StringVar(&kind, "kind", "", `only this kind (e.g. stream, agent.revoke), or a prefix ending in "." (agent.)`)
	fs.StringVar(&request, "request", "", "only the records of this request id (from a refusal, the relay's log or the agent's access log)")
	fs.StringVar(&since, "since", "", "from this time (RFC 3339) or this long ago (e.g. 2h)")
	fs.StringVar(&until, "until", "", "before this time (RFC 3339) or this long ago")
	fs.IntVar(&limit, "limit", 100, "records per page (at most 1000)")
	fs.StringVar(&cursor, "cursor", "", "the next page: the cursor printed after a full page")
	return cmd
}
