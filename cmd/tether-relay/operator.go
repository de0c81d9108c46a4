package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/tetherhq/tether/cmd/internal/cli"
	"github.com/tetherhq/tether/relay/admin"
)

// operatorCmd manages the credentials of the admin API.
func operatorCmd(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("operator", stderr)
	dataDir := fs.String("data-dir", defaultDataDir(), "data directory")
	name := fs.String("name", "", "token create: the operator's name (audit records name them)")
	ttl := fs.Duration("ttl", admin.DefaultOperatorTokenTTL, "token create: how long the token stays valid")
	out := fs.String("out", "", "certificate: directory to write operator.crt, operator.key and ca.crt to")
	lifetime := fs.Duration("lifetime", admin.DefaultOperatorTokenTTL, "certificate: validity of the operator certificate")
	output := fs.String("o", "table", "output of token list: table or json")
	pos, err := cli.ParseInterspersed(fs, args)
	if err != nil {
		return err
	}
	const usage = "usage: tether-relay operator token create --name NAME [--ttl D] | operator token list | operator token revoke ID | operator certificate NAME --out DIR [--lifetime D]"
	switch {
	case len(pos) == 2 && pos[0] == "token" && pos[1] == "create":
		if *name == "" {
			return errors.New("operator token create needs --name")
		}
		return withAdmin(*dataDir, func(ctx context.Context, a *admin.Admin) error {
			tok, info, err := a.CreateOperatorToken(ctx, *name, *ttl)
			if err != nil {
				return err
			}
			fmt.Fprintln(stdout, tok)
			fmt.Fprintf(stderr, "operator token %s for %s (above; shown only once), expires %s\n", info.ID, info.Name, info.ExpiresAt.Format(time.RFC3339))
			return nil
		})
	case len(pos) == 2 && pos[0] == "token" && pos[1] == "list":
		return withAdmin(*dataDir, func(ctx context.Context, a *admin.Admin) error {
			ts, err := a.OperatorTokens(ctx)
			if err != nil {
				return err
			}
			now := time.Now()
			return printList(stdout, *output, ts, "ID\tNAME\tCREATED\tEXPIRES\tSTATE", func(t admin.OperatorTokenInfo) string {
				state := "valid"
				switch {
				case t.RevokedAt != nil:
					state = "revoked " + t.RevokedAt.Format(time.RFC3339)
				case !now.Before(t.ExpiresAt):
					state = "expired"
				}
				return fmt.Sprintf("%s\t%s\t%s\t%s\t%s", t.ID, t.Name, t.CreatedAt.Format(time.RFC3339), t.ExpiresAt.Format(time.RFC3339), state)
			})
		})
	case len(pos) == 3 && pos[0] == "token" && pos[1] == "revoke":
		return withAdmin(*dataDir, func(ctx context.Context, a *admin.Admin) error {
			info, err := a.RevokeOperatorToken(ctx, pos[2])
			if err != nil {
				return err
			}
			fmt.Fprintf(stderr, "operator token %s of %s revoked; the admin API refuses it from the next request\n", info.ID, info.Name)
			return nil
		})
	case len(pos) == 2 && (pos[0] == "certificate" || pos[0] == "cert"):
		if *out == "" {
			return errors.New("operator certificate needs --out DIR")
		}
		return withAdmin(*dataDir, func(ctx context.Context, a *admin.Admin) error {
			c, err := a.IssueOperatorCertificate(pos[1], *lifetime)
			if err != nil {
				return err
			}
			if err := c.WriteFiles(*out); err != nil {
				return err
			}
			fmt.Fprintf(stderr, "wrote %s: operator.crt and operator.key (identity %s, valid until %s) and ca.crt\n",
				*out, c.Identity, c.NotAfter.UTC().Format(time.RFC3339))
			return nil
		})
	}
	return errors.New(usage)
}

// exportCA writes the relay CA bundle (PEM) to file, or stdout when file
// is "".
func exportCA(a *admin.Admin, file string, stdout, stderr io.Writer) error {
	pem := a.CABundlePEM()
	if file == "" {
		_, err := stdout.Write(pem)
		return err
	}
	if err := os.WriteFile(file, pem, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "wrote the relay CA (%s) to %s\n", a.CAFingerprint(), file)
	return nil
}
