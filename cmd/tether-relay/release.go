package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/tetherhq/tether/cmd/internal/cli"
	"github.com/tetherhq/tether/protocol/release"
	"github.com/tetherhq/tether/relay/admin"
)

// manifestFlags describe the agent binary release sign and release
// publish sign.
type manifestFlags struct {
	file, version, goos, arch, channel, expires, key string
}

func (m *manifestFlags) add(fs *pflag.FlagSet) {
	fs.StringVar(&m.file, "file", "", "the agent binary")
	fs.StringVar(&m.version, "version", "", "its version (1.2.3)")
	fs.StringVar(&m.goos, "os", "", "the OS it is built for (GOOS)")
	fs.StringVar(&m.arch, "arch", "", "the architecture it is built for (GOARCH)")
	fs.StringVar(&m.channel, "channel", release.DefaultChannel, "release channel")
	fs.StringVar(&m.expires, "expires", "30d", "how long agents accept the manifest (e.g. 30d, 12h)")
	fs.StringVar(&m.key, "key", "", "the private signing key (release.key)")
}

// sign signs the binary into dir.
func (m *manifestFlags) sign(dir string) (release.Manifest, error) {
	d, err := parseDays(m.expires)
	if err != nil {
		return release.Manifest{}, cli.Usagef("--expires: %v", err)
	}
	if m.file == "" || m.version == "" || m.goos == "" || m.arch == "" || m.key == "" {
		return release.Manifest{}, cli.Usagef("need --file, --version, --os, --arch and --key")
	}
	man := release.Manifest{Version: m.version, OS: m.goos, Arch: m.arch, Channel: m.channel, Expires: time.Now().Add(d).Truncate(time.Second)}
	keyText, err := os.ReadFile(m.key)
	if err != nil {
		return man, err
	}
	key, err := release.ParsePrivateKey(keyText)
	if err != nil {
		return man, err
	}
	return release.SignFile(key, man, m.file, dir)
}

func releaseCmd(g *globals) *cobra.Command {
	var keyOut string
	keygenCmd := &cobra.Command{
		Use:   "keygen --out DIR",
		Short: "Make a release signing key pair (release.key, release.pub); no data directory needed",
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if keyOut == "" {
				return cli.Usagef("release keygen needs --out DIR")
			}
			return keygen(keyOut, cmd.ErrOrStderr())
		},
	}
	keygenCmd.Flags().StringVar(&keyOut, "out", "", "directory to write release.key (0600) and release.pub to (required)")

	var signM manifestFlags
	var signOut string
	signCmd := &cobra.Command{
		Use:   "sign --file BIN --version V --os O --arch A --key KEYFILE --out DIR",
		Short: "Sign an agent binary into a directory to publish (no data directory needed)",
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if signOut == "" {
				return cli.Usagef("release sign needs --out DIR")
			}
			m, err := signM.sign(signOut)
			if err != nil {
				return err
			}
			say(cmd, "signed release %s %s/%s %s (sha256 %s, %d bytes, expires %s) in %s; publish it with: tether-relay release publish --signed %s",
				m.Version, m.OS, m.Arch, m.Channel, m.SHA256, m.Size, m.Expires.UTC().Format(time.RFC3339), signOut, signOut)
			return nil
		},
	}
	signM.add(signCmd.Flags())
	signCmd.Flags().StringVar(&signOut, "out", "", "directory to write the binary, its manifest and signature to (required)")

	var pubM manifestFlags
	var signed, pubFile string
	publishCmd := &cobra.Command{
		Use:   "publish (--signed DIR | --file BIN --version V --os O --arch A --key KEYFILE)",
		Short: "Publish a signed release to the relay's update channel",
		Long: `Publish a release: a directory written by release sign (--signed, checked
with --pub first if given), or a binary signed here and now (--file …
--key): the data directory receives only the signed files.`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var keys release.Keys
			if pubFile != "" {
				b, err := os.ReadFile(pubFile)
				if err != nil {
					return err
				}
				if keys, err = release.ParseKeys([]string{string(b)}); err != nil {
					return err
				}
			}
			dir := signed
			if dir == "" {
				tmp, err := os.MkdirTemp("", "tether-release-")
				if err != nil {
					return err
				}
				defer os.RemoveAll(tmp)
				if _, err := pubM.sign(tmp); err != nil {
					return err
				}
				dir = tmp
			}
			return g.withAdmin(cmd, func(ctx context.Context, a *admin.Admin) error {
				r, err := a.PublishRelease(ctx, dir, keys)
				if err != nil {
					return err
				}
				say(cmd, "published release %s %s/%s %s signed by key %s (expires %s)", r.Version, r.OS, r.Arch, r.Channel, r.KeyID, r.Expires.UTC().Format(time.RFC3339))
				return nil
			})
		},
	}
	pubM.add(publishCmd.Flags())
	publishCmd.Flags().StringVar(&signed, "signed", "", "a directory written by release sign")
	publishCmd.Flags().StringVar(&pubFile, "pub", "", "with --signed: verify the signatures with this public key first")

	listCmd := &cobra.Command{
		Use:   "list",
		Short: "List published releases",
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.withAdmin(cmd, func(ctx context.Context, a *admin.Admin) error {
				rs, err := a.Releases(ctx)
				if err != nil {
					return err
				}
				rs = nonNil(rs)
				return cli.Print(cmd.OutOrStdout(), output(cmd), rs, func(w io.Writer) error {
					now := time.Now()
					rows := make([][]string, len(rs))
					for i, r := range rs {
						rows[i] = []string{r.Version, r.OS + "/" + r.Arch, r.Channel, cli.Bytes(uint64(max(r.Size, 0))), r.KeyID, cli.When(r.Expires, now), cli.Since(r.PublishedAt, now)}
					}
					return cli.WriteTable(w, []string{"VERSION", "PLATFORM", "CHANNEL", "SIZE", "KEY", "EXPIRES", "PUBLISHED"}, rows)
				})
			})
		},
	}

	var force bool
	removeCmd := &cobra.Command{
		Use:   "remove VERSION [--force]",
		Short: "Remove a release (every platform and channel of VERSION) from the store and the data directory",
		Long:  cli.ReleaseRemoveHelp,
		Args:  cli.Args("VERSION"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withAdmin(cmd, func(ctx context.Context, a *admin.Admin) error {
				rm, err := a.RemoveRelease(ctx, args[0], force)
				if err != nil {
					return err
				}
				say(cmd, "%s", cli.RemovedRelease(rm.Version, len(rm.Releases), rm.BlobsRemoved, rm.BytesFreed, rm.AgentUpdatesPruned))
				return nil
			})
		},
	}
	removeCmd.Flags().BoolVar(&force, "force", false, "remove it even while agents were offered it or were downloading it in the last 15 minutes (never while a rollout offers it)")

	var ro rolloutFlags
	rolloutCmd := &cobra.Command{
		Use:   "rollout VERSION (--percent N | --tenants a,b | --agents id,...)",
		Short: "Roll a published version out to agents (it supersedes the active rollout)",
		Args:  cli.Args("VERSION"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withAdmin(cmd, func(ctx context.Context, a *admin.Admin) error {
				r, warns, err := a.StartRollout(ctx, admin.Rollout{Version: args[0], Percent: ro.percent, Tenants: cleanList(ro.tenants),
					Agents: cleanList(ro.agents), HaltAt: ro.haltAt, Batch: ro.batch})
				if err != nil {
					return err
				}
				for _, w := range warns {
					say(cmd, "warning: %s", w)
				}
				say(cmd, "rollout %d of %s started; a running relay offers it to the agents it selects within a few seconds", r.ID, r.Version)
				return nil
			})
		},
	}
	ro.add(rolloutCmd.Flags())

	var sf cli.ReleaseStatusFlags
	statusCmd := &cobra.Command{
		Use:   "status",
		Short: "Show rollouts, agents' updates counted by state, and a page of them, newest first (--cursor for the next)",
		Long:  cli.ReleaseStatusHelp,
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.withAdmin(cmd, func(ctx context.Context, a *admin.Admin) error {
				st, err := a.UpdateStatus(ctx, admin.UpdateQuery{Version: sf.Version, Tenant: sf.Tenant, State: sf.State, Limit: sf.Limit, Cursor: sf.Cursor})
				if err != nil {
					return err
				}
				st.Rollouts, st.Agents = nonNil(st.Rollouts), nonNil(st.Agents)
				err = cli.Print(cmd.OutOrStdout(), output(cmd), st, func(w io.Writer) error {
					now := time.Now()
					var rows [][]string
					for _, r := range st.Rollouts {
						rows = append(rows, []string{strconv.FormatInt(r.ID, 10), r.Version, rolloutTarget(r.Percent, r.Tenants, r.Agents),
							strconv.FormatFloat(r.HaltAt, 'g', -1, 64), r.State, cli.Since(r.CreatedAt, now), r.Reason})
					}
					if err := cli.WriteTable(w, []string{"ROLLOUT", "VERSION", "TO", "HALT AT", "STATE", "STARTED", "REASON"}, rows); err != nil {
						return err
					}
					fmt.Fprintln(w)
					if err := sf.WriteCounts(w, st.Counts); err != nil {
						return err
					}
					fmt.Fprintln(w)
					rows = nil
					for _, u := range st.Agents {
						rows = append(rows, []string{u.Agent, u.Tenant, u.From, u.Version, u.State, cli.Since(u.UpdatedAt, now), strings.TrimSpace(u.Reason + " " + u.Message)})
					}
					return cli.WriteTable(w, []string{"AGENT", "TENANT", "FROM", "VERSION", "STATE", "UPDATED", "REASON"}, rows)
				})
				if err == nil && st.NextCursor != "" {
					say(cmd, "%s", sf.More("tether-relay", st.NextCursor, len(st.Agents), st.Counts))
				}
				return err
			})
		},
	}
	sf.Add(statusCmd.Flags())
	return cli.Group("release", "Agent releases: signing, publishing and rollouts", keygenCmd, signCmd, publishCmd, listCmd, removeCmd, rolloutCmd, statusCmd)
}

// rolloutFlags are release rollout's, in both binaries.
type rolloutFlags struct {
	percent, batch  int
	tenants, agents []string
	haltAt          float64
}

func (r *rolloutFlags) add(fs *pflag.FlagSet) {
	fs.IntVar(&r.percent, "percent", 0, "this percentage of all agents (1-100)")
	fs.StringSliceVar(&r.tenants, "tenants", nil, "the agents of these tenants (comma-separated)")
	fs.StringSliceVar(&r.agents, "agents", nil, "these agents (comma-separated ids)")
	fs.Float64Var(&r.haltAt, "halt-at", 0, "halt when this fraction of the agents offered the release fail (0: never)")
	fs.IntVar(&r.batch, "batch", 0, "at most this many agents updating at once (0: no limit)")
}

// rolloutTarget says which agents a rollout selects.
func rolloutTarget(percent int, tenants, agents []string) string {
	switch {
	case len(tenants) > 0:
		return "tenants " + strings.Join(tenants, ",")
	case len(agents) > 0:
		return "agents " + strings.Join(agents, ",")
	}
	return fmt.Sprintf("%d%%", percent)
}

// parseDays is time.ParseDuration that also takes whole days ("30d").
func parseDays(s string) (time.Duration, error) {
	if d, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(d)
		if err != nil || n <= 0 {
			return 0, fmt.Errorf("%q: want a positive number of days or a duration", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	v, err := time.ParseDuration(s)
	if err == nil && v <= 0 {
		err = fmt.Errorf("%q: want a positive duration", s)
	}
	return v, err
}

// keygen writes release.key (owner-only) and release.pub into dir. It
// refuses to overwrite a key.
func keygen(dir string, stderr io.Writer) error {
	priv, pub, err := release.GenerateKey()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	keyPath := filepath.Join(dir, "release.key")
	f, err := os.OpenFile(keyPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("write signing key (an existing key is never overwritten): %w", err)
	}
	if _, err := f.Write(priv); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "release.pub"), pub, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "wrote %s (keep it offline, with the vendor: it can sign code every agent will run) and %s (build it into agents or put it in their config under update: public_keys)\n",
		keyPath, filepath.Join(dir, "release.pub"))
	return nil
}
