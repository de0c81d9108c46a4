package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/tetherhq/tether/cmd/internal/cli"
	"github.com/tetherhq/tether/protocol/release"
	"github.com/tetherhq/tether/relay/admin"
)

const releaseUsage = `usage:
  tether-relay release keygen --out DIR
  tether-relay release sign --file BIN --version V --os O --arch A [--channel stable] [--expires 30d] --key KEYFILE --out DIR
  tether-relay release publish --signed DIR [--pub release.pub]
  tether-relay release publish --file BIN --version V --os O --arch A [--channel stable] [--expires 30d] --key KEYFILE
  tether-relay release list
  tether-relay release rollout V (--percent N | --tenants a,b | --agents id,…) [--halt-at FRACTION] [--batch N]
  tether-relay release status [--version V]`

func releaseCmd(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("release", stderr)
	dataDir := fs.String("data-dir", defaultDataDir(), "data directory")
	out := fs.String("out", "", "keygen, sign: directory to write")
	file := fs.String("file", "", "sign, publish: the agent binary")
	version := fs.String("version", "", "sign, publish: its version (1.2.3); status: only this version")
	goos := fs.String("os", "", "sign, publish: the OS it is built for (GOOS)")
	arch := fs.String("arch", "", "sign, publish: the architecture it is built for (GOARCH)")
	channel := fs.String("channel", release.DefaultChannel, "sign, publish: release channel")
	expires := fs.String("expires", "30d", "sign, publish: how long agents accept the manifest (e.g. 30d, 12h)")
	keyFile := fs.String("key", "", "sign, publish: the private signing key (release.key)")
	signed := fs.String("signed", "", "publish: a directory written by release sign")
	pubFile := fs.String("pub", "", "publish --signed: verify the signatures with this public key first")
	percent := fs.Int("percent", 0, "rollout: this percentage of all agents")
	tenants := fs.String("tenants", "", "rollout: the agents of these tenants (comma-separated)")
	agents := fs.String("agents", "", "rollout: these agents (comma-separated ids)")
	haltAt := fs.Float64("halt-at", 0, "rollout: halt when this fraction of the agents offered the release fail (0: never)")
	batch := fs.Int("batch", 0, "rollout: at most this many agents updating at once (0: no limit)")
	output := fs.String("o", "table", "output: table or json")
	pos, err := cli.ParseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		return errors.New(releaseUsage)
	}
	manifest := func() (release.Manifest, error) {
		d, err := parseDays(*expires)
		if err != nil {
			return release.Manifest{}, fmt.Errorf("--expires: %w", err)
		}
		if *file == "" || *version == "" || *goos == "" || *arch == "" || *keyFile == "" {
			return release.Manifest{}, errors.New("need --file, --version, --os, --arch and --key")
		}
		return release.Manifest{Version: *version, OS: *goos, Arch: *arch, Channel: *channel, Expires: time.Now().Add(d).Truncate(time.Second)}, nil
	}
	sign := func(dir string) (release.Manifest, error) {
		m, err := manifest()
		if err != nil {
			return m, err
		}
		keyText, err := os.ReadFile(*keyFile)
		if err != nil {
			return m, err
		}
		key, err := release.ParsePrivateKey(keyText)
		if err != nil {
			return m, err
		}
		return release.SignFile(key, m, *file, dir)
	}
	switch pos[0] {
	case "keygen":
		if *out == "" {
			return errors.New("release keygen needs --out DIR")
		}
		return keygen(*out, stderr)
	case "sign":
		if *out == "" {
			return errors.New("release sign needs --out DIR")
		}
		m, err := sign(*out)
		if err != nil {
			return err
		}
		fmt.Fprintf(stderr, "signed release %s %s/%s %s (sha256 %s, %d bytes, expires %s) in %s; publish it with: tether-relay release publish --signed %s\n",
			m.Version, m.OS, m.Arch, m.Channel, m.SHA256, m.Size, m.Expires.Format(time.RFC3339), *out, *out)
		return nil
	case "publish":
		dir := *signed
		var keys release.Keys
		if *pubFile != "" {
			b, err := os.ReadFile(*pubFile)
			if err != nil {
				return err
			}
			if keys, err = release.ParseKeys([]string{string(b)}); err != nil {
				return err
			}
		}
		if dir == "" {
			// Sign here, in this process, into a temporary directory: the
			// relay's data directory receives only the signed files.
			tmp, err := os.MkdirTemp("", "tether-release-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(tmp)
			if _, err := sign(tmp); err != nil {
				return err
			}
			dir = tmp
		}
		return withAdmin(*dataDir, func(ctx context.Context, a *admin.Admin) error {
			r, err := a.PublishRelease(ctx, dir, keys)
			if err != nil {
				return err
			}
			fmt.Fprintf(stderr, "published release %s %s/%s %s signed by key %s (expires %s)\n", r.Version, r.OS, r.Arch, r.Channel, r.KeyID, r.Expires.Format(time.RFC3339))
			return nil
		})
	case "list":
		return withAdmin(*dataDir, func(ctx context.Context, a *admin.Admin) error {
			rs, err := a.Releases(ctx)
			if err != nil {
				return err
			}
			return printList(stdout, *output, rs, "VERSION\tOS\tARCH\tCHANNEL\tSIZE\tKEY\tEXPIRES\tPUBLISHED", func(r admin.Release) string {
				return strings.Join([]string{r.Version, r.OS, r.Arch, r.Channel, strconv.FormatInt(r.Size, 10), r.KeyID, r.Expires.Format(time.RFC3339), r.PublishedAt.Format(time.RFC3339)}, "\t")
			})
		})
	case "rollout":
		if len(pos) != 2 {
			return errors.New("usage: tether-relay release rollout V (--percent N | --tenants a,b | --agents id,…) [--halt-at FRACTION] [--batch N]")
		}
		return withAdmin(*dataDir, func(ctx context.Context, a *admin.Admin) error {
			ro, warns, err := a.StartRollout(ctx, admin.Rollout{Version: pos[1], Percent: *percent, Tenants: splitComma(*tenants), Agents: splitComma(*agents), HaltAt: *haltAt, Batch: *batch})
			if err != nil {
				return err
			}
			for _, w := range warns {
				fmt.Fprintln(stderr, "warning:", w)
			}
			fmt.Fprintf(stderr, "rollout %d of %s started; a running relay offers it to the agents it selects within a few seconds\n", ro.ID, ro.Version)
			return nil
		})
	case "status":
		return withAdmin(*dataDir, func(ctx context.Context, a *admin.Admin) error {
			st, err := a.UpdateStatus(ctx, *version)
			if err != nil {
				return err
			}
			if *output == "json" {
				return printJSON(stdout, st)
			}
			if err := printList(stdout, "table", st.Rollouts, "ROLLOUT\tVERSION\tSELECTS\tHALT AT\tSTATE\tREASON", func(r admin.Rollout) string {
				sel := fmt.Sprintf("%d%%", r.Percent)
				if len(r.Tenants) > 0 {
					sel = "tenants " + strings.Join(r.Tenants, ",")
				} else if len(r.Agents) > 0 {
					sel = "agents " + strings.Join(r.Agents, ",")
				}
				return strings.Join([]string{strconv.FormatInt(r.ID, 10), r.Version, sel, strconv.FormatFloat(r.HaltAt, 'g', -1, 64), r.State, dash(r.Reason)}, "\t")
			}); err != nil {
				return err
			}
			fmt.Fprintln(stdout)
			return printList(stdout, "table", st.Agents, "AGENT\tTENANT\tFROM\tVERSION\tSTATE\tREASON\tUPDATED\tMESSAGE", func(u admin.AgentUpdate) string {
				return strings.Join([]string{u.Agent, u.Tenant, dash(u.From), u.Version, u.State, dash(u.Reason), u.UpdatedAt.Format(time.RFC3339), dash(u.Message)}, "\t")
			})
		})
	}
	return errors.New(releaseUsage)
}

func splitComma(s string) []string {
	var out []string
	for _, x := range strings.Split(s, ",") {
		if x = strings.TrimSpace(x); x != "" {
			out = append(out, x)
		}
	}
	return out
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
