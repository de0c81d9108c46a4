package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tetherhq/tether/cmd/internal/cli"
	"github.com/tetherhq/tether/relay/admin"
)

func caCmd(g *globals) *cobra.Command {
	status := &cobra.Command{
		Use:   "status",
		Short: "Show the CA's roots and how many agents and join tokens depend on each",
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.withAdmin(cmd, func(ctx context.Context, a *admin.Admin) error {
				st, err := a.CAStatus(ctx)
				if err != nil {
					return err
				}
				return printCAStatus(cmd, st)
			})
		},
	}
	var renewNow bool
	rotate := &cobra.Command{
		Use:   "rotate",
		Short: "Add a new root: agents move to it at their next renewal (or at once with --renew-now)",
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.withAdmin(cmd, func(ctx context.Context, a *admin.Admin) error {
				st, err := a.RotateCA(ctx, renewNow)
				if err != nil {
					return err
				}
				newRoot := st.Roots[len(st.Roots)-1]
				say(cmd, "CA root %d (%s) added; a running relay issues agent certificates from it within a second and trusts both roots until tether-relay ca retire",
					newRoot.Generation, newRoot.Fingerprint)
				if renewNow {
					say(cmd, "connected agents are asked to renew now; the others move at their next renewal")
				} else {
					say(cmd, "agents move to it at their next renewal (tether-relay ca renew-now asks connected agents to renew at once)")
				}
				return printCAStatus(cmd, st)
			})
		},
	}
	rotate.Flags().BoolVar(&renewNow, "renew-now", false, "ask connected agents to renew at once instead of at their next scheduled renewal")
	renew := &cobra.Command{
		Use:   "renew-now",
		Short: "During a rotation, ask agents still on the old root to renew at once",
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.withAdmin(cmd, func(ctx context.Context, a *admin.Admin) error {
				st, err := a.RenewNowCA(ctx)
				if err != nil {
					return err
				}
				say(cmd, "a running relay asks its connected agents on the old root to renew within a second, and others as soon as they connect")
				return printCAStatus(cmd, st)
			})
		},
	}
	var force bool
	retire := &cobra.Command{
		Use:   "retire",
		Short: "End a rotation: stop trusting the old root (refused while agents depend on it, unless --force)",
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.withAdmin(cmd, func(ctx context.Context, a *admin.Admin) error {
				res, err := a.RetireCA(ctx, force)
				if err != nil {
					return err
				}
				if f := output(cmd); f != cli.Table {
					return cli.Print(cmd.OutOrStdout(), f, res, nil)
				}
				say(cmd, "CA root %d (%s) retired; a running relay stops trusting it within a second", res.Retired.Generation, res.Retired.Fingerprint)
				for _, x := range res.Stranded {
					say(cmd, "agent %s of tenant %s (%s) still held a certificate from it: enrol it again", x.ID, x.Tenant, x.Hostname)
				}
				if n := res.Retired.Agents - len(res.Stranded); n > 0 {
					say(cmd, "and %d more agents must enrol again", n)
				}
				for _, t := range res.Tokens {
					say(cmd, "join token %s of tenant %s pinned it and no longer works: create a new one", t.ID, t.Tenant)
				}
				return nil
			})
		},
	}
	retire.Flags().BoolVar(&force, "force", false, "even if agents still hold certificates from the old root (they will have to enrol again)")
	var out string
	export := &cobra.Command{
		Use:   "export",
		Short: "Write the CA's active roots (PEM): what to verify the relay with",
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.withAdmin(cmd, func(ctx context.Context, a *admin.Admin) error {
				pem := a.CABundlePEM()
				if out == "" {
					_, err := cmd.OutOrStdout().Write(pem)
					return err
				}
				if err := os.WriteFile(out, pem, 0o644); err != nil {
					return err
				}
				say(cmd, "wrote the relay CA (%s) to %s", a.CAFingerprint(), out)
				return nil
			})
		},
	}
	export.Flags().StringVar(&out, "out", "", "file to write the CA bundle to (default: standard output)")
	return cli.Group("ca", "The relay's CA: status and rotation", status, rotate, renew, retire, export)
}

func printCAStatus(cmd *cobra.Command, st admin.CAStatus) error {
	return cli.Print(cmd.OutOrStdout(), output(cmd), st, func(w io.Writer) error {
		now := time.Now()
		endorsedBy := func(r admin.CARoot) string {
			if r.EndorsedBy == 0 {
				return "-"
			}
			return "root " + strconv.Itoa(r.EndorsedBy)
		}
		var rows [][]string
		for _, r := range st.Roots {
			rows = append(rows, []string{strconv.Itoa(r.Generation), strings.Join(r.Roles, ","), r.Fingerprint, cli.Since(r.AddedAt, now),
				cli.When(r.NotAfter, now), strconv.Itoa(r.Agents), strconv.Itoa(r.Tokens), endorsedBy(r)})
		}
		for _, r := range st.Retired {
			state := "retired"
			if r.RetiredAt != nil {
				state += " " + cli.Since(*r.RetiredAt, now)
			}
			rows = append(rows, []string{strconv.Itoa(r.Generation), state, r.Fingerprint, cli.Since(r.AddedAt, now),
				cli.When(r.NotAfter, now), strconv.Itoa(r.Agents), strconv.Itoa(r.Tokens), endorsedBy(r)})
		}
		if err := cli.WriteTable(w, []string{"ROOT", "STATE", "FINGERPRINT", "ADDED", "NOT AFTER", "AGENTS", "TOKENS", "ENDORSED BY"}, rows); err != nil {
			return err
		}
		switch {
		case st.Rotating && st.RenewNow:
			fmt.Fprintln(w, "rotation in progress: agents on the old root are asked to renew now; retire it with tether-relay ca retire once AGENTS is 0")
		case st.Rotating:
			fmt.Fprintln(w, "rotation in progress: agents move to the new root at their next renewal; retire the old one with tether-relay ca retire once AGENTS is 0")
		}
		return nil
	})
}
