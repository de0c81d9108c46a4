package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/tetherhq/tether/cmd/internal/cli"
	"github.com/tetherhq/tether/relay/admin"
)

const initLong = `Initialise the relay's data directory as its first start would — the CA
(of the trust domain serve would give it), the store, the audit log — and
exit, so that tenants, join tokens and backends can be made with the admin
commands before the relay first serves (a provisioning script, a container
image). On a data directory a relay or an earlier init initialised, it
changes nothing, says so and exits 0; asked for another trust domain than
the CA's, it fails, since a CA's trust domain never changes.

It reads what serve reads: --data-dir, --store and --ca-kek-file (a
cluster's PostgreSQL store holds the CA, sealed with the key), and the
trust domain from --trust-domain, TETHER_TRUST_DOMAIN or the config file's
trust_domain, else tether.internal. Prints the data directory, the trust
domain and the CA's fingerprint (-o json or yaml for programs).`

func initCmd(g *globals) *cobra.Command {
	var trustDomain string
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Initialise the data directory (CA, store, audit log) as a first start would, then exit",
		Long:  initLong,
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o, err := g.adminOptions(cmd)
			if err != nil {
				return err
			}
			pick, err := g.picker()
			if err != nil {
				return err
			}
			o.TrustDomain = pick(cmd.Flags().Changed("trust-domain"), trustDomain, "TETHER_TRUST_DOMAIN", "trust_domain", "")
			ctx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
			defer cancel()
			res, err := admin.Init(ctx, o)
			if err != nil {
				return err
			}
			if res.Created {
				say(cmd, "initialised %s: a relay started on it serves this CA; admin commands work on it now", res.DataDir)
			} else {
				say(cmd, "%s is initialised already: nothing changed", res.DataDir)
			}
			return cli.Print(cmd.OutOrStdout(), output(cmd), res, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "data directory  %s\ntrust domain    %s\nCA fingerprint  %s\n", res.DataDir, res.TrustDomain, res.CAFingerprint)
				return err
			})
		},
	}
	cmd.Flags().StringVar(&trustDomain, "trust-domain", "", "SPIFFE trust domain of the new CA (env TETHER_TRUST_DOMAIN; config trust_domain; default tether.internal)")
	return cmd
}
