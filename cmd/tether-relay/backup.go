package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/tetherhq/tether/cmd/internal/cli"
	"github.com/tetherhq/tether/relay/admin"
)

const backupLong = `Write a consistent backup of the data directory to DEST, a new
directory, while the relay serves: the store copied with SQLite's online
copy (VACUUM INTO), the CA (its private keys included), the relay's id and
the cached OIDC keys, with a manifest (backup.json) saying when it was
taken and what it holds. DEST is made 0700 and its files 0600; it is
written beside DEST and renamed into place once complete and synced, so
an interrupted backup leaves no DEST. An existing DEST is refused unless
--force, which replaces only an earlier backup or an empty directory.

--verify DIR checks a backup instead: its files against the manifest,
the store's integrity and schema, and that the CA loads.

Restore: stop the relay, move its data directory aside (keep it: its
audit.log records what happened since the backup), put the backup in its
place with the old audit.log, start the relay. Its first start on the
restored copy catches up from the audit log and spends the backup's join
tokens (README, "Backup and restore").

Local only: the backup holds the CA's private keys, which never leave the
relay's host; tetherctl has no backup. A relay on PostgreSQL (--store) is
refused: back the database up with pg_dump and keep the CA key-encryption
key apart.`

func backupCmd(g *globals) *cobra.Command {
	var force, verify bool
	cmd := &cobra.Command{
		Use:   "backup DEST",
		Short: "Write a consistent backup of the data directory while the relay serves (local only), or check one",
		Long:  backupLong,
		Args:  cli.Args("DEST"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if verify {
				if force {
					return cli.Usagef("--force goes with a backup, not with --verify")
				}
				ctx, cancel := context.WithTimeout(cmd.Context(), time.Hour)
				defer cancel()
				m, err := admin.VerifyBackup(ctx, args[0])
				if err != nil {
					return err
				}
				return printBackup(cmd, "backup "+args[0]+" verified", m)
			}
			// Refused before anything is opened: no database connection,
			// no key-encryption key needed to be told.
			if st, err := g.adminStore(cmd); err != nil {
				return err
			} else if st != "" {
				return fmt.Errorf("backup: %w", admin.ErrSharedStore)
			}
			return g.withAdminFor(cmd, time.Hour, func(ctx context.Context, a *admin.Admin) error {
				m, err := a.Backup(ctx, args[0], force, g.info.Version)
				if err != nil {
					return err
				}
				dest, _ := filepath.Abs(args[0])
				return printBackup(cmd, "backup written to "+dest, m)
			})
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "replace DEST if it is an earlier backup (or an empty directory)")
	cmd.Flags().BoolVar(&verify, "verify", false, "check the backup DIR instead of writing one")
	return cmd
}

// printBackup prints a backup's files and a summary line (-o json or
// yaml: its manifest).
func printBackup(cmd *cobra.Command, what string, m admin.BackupManifest) error {
	return cli.Print(cmd.OutOrStdout(), output(cmd), m, func(w io.Writer) error {
		rows := make([][]string, len(m.Files))
		for i, f := range m.Files {
			rows[i] = []string{f.Path, strconv.FormatInt(f.Size, 10), f.SHA256[:16]}
		}
		if err := cli.WriteTable(w, []string{"FILE", "BYTES", "SHA256"}, rows); err != nil {
			return err
		}
		s := m.Store
		_, err := fmt.Fprintf(w, "%s: taken %s, schema %d, change feed at %d: %d agents (%d revoked), %d join tokens, %d backends, %d audit records, %d CA roots\n",
			what, m.TakenAt.Format(time.RFC3339), s.Schema, s.LatestChange, s.Agents, s.RevokedAgents, s.JoinTokens, s.Backends, s.AuditRecords, len(m.CARoots))
		return err
	})
}
