package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tetherhq/tether/agent"
	"github.com/tetherhq/tether/cmd/internal/cli"
	"github.com/tetherhq/tether/installer"
)

func statusCmd() *cobra.Command {
	var o statusOptions
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the agent's connections, streams and certificate",
		Long: `Show a running agent's status, as its status listener serves it
(status_listen in its config, loopback only): the agent and tenant, version,
certificate expiry, streams and bytes, services, config and access log, and
a table of its connections to relays (address and relay id, state,
transport and why, RTT, last error), and the relays of the cluster when
the relays send their list. -o json prints the JSON the agent serves, as served.

--config FILE asks the agent at that config's status_listen; --addr
HOST:PORT asks the one there. Without either it reports on the installed
service: its state from the service manager, then the agent's status
through the installed config.`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return status(cmd.Context(), o, output(cmd), cmd.OutOrStdout())
		},
	}
	fs := cmd.Flags()
	configFlag(cmd, &o.configPath, "agent config file, YAML: its status_listen is asked")
	fs.StringVar(&o.addr, "addr", "", "the agent's status address, HOST:PORT (instead of --config)")
	fs.DurationVar(&o.timeout, "timeout", 5*time.Second, "give up after this long")
	return cmd
}

type statusOptions struct {
	configPath, addr string
	timeout          time.Duration
}

// status asks a running agent's status listener for its status and prints
// it. Without --config or --addr it reports on the installed service: its
// state from the service manager, then the agent's status through the
// status_listen of the service's config.
func status(ctx context.Context, o statusOptions, f cli.Format, stdout io.Writer) error {
	switch {
	case o.addr != "" && o.configPath != "":
		return cli.Usagef("give --config or --addr, not both")
	case o.addr == "" && o.configPath == "":
		// The installed service: its state from the service manager,
		// then the agent's own status through the config it runs with.
		l := installer.DefaultLayout()
		svc, err := installer.Status(l)
		if err != nil {
			return fmt.Errorf("service %s: %w; for an agent not run by the service manager, give --config FILE or --addr HOST:PORT", l.Name, err)
		}
		if f == cli.Table {
			fmt.Fprintf(stdout, "service %s: %s\n", l.Name, svc)
		}
		if svc == "not installed" {
			return errors.New("no installed agent: give --config FILE or --addr HOST:PORT for an agent run by hand")
		}
		o.configPath = l.ConfigPath
		fallthrough
	case o.configPath != "":
		cfg, err := agent.LoadConfig(o.configPath)
		if err != nil {
			return err
		}
		if cfg.StatusListen == "" {
			return fmt.Errorf("%s has no status_listen: add status_listen: 127.0.0.1:7456 and restart the agent", o.configPath)
		}
		o.addr = cfg.StatusListen
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+o.addr+"/status", nil)
	if err != nil {
		return fmt.Errorf("status address %q: %w", o.addr, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("ask the agent at %s (is it running, with status_listen set?): %w", o.addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return fmt.Errorf("read status from %s: %w", o.addr, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("agent at %s answered %s", o.addr, resp.Status)
	}
	var st agent.Status
	if err := json.Unmarshal(body, &st); err != nil {
		return fmt.Errorf("status from %s: %w", o.addr, err)
	}
	switch f {
	case cli.JSON:
		_, err := stdout.Write(body) // as served
		return err
	case cli.YAML:
		return cli.Print(stdout, f, json.RawMessage(body), nil)
	}
	printStatus(stdout, st, time.Now())
	return nil
}

func printStatus(w io.Writer, st agent.Status, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	ago := func(t time.Time) string { return now.Sub(t).Round(time.Second).String() }
	ms := func(n int64) time.Time { return time.UnixMilli(n) }
	fmt.Fprintf(tw, "agent\t%s (tenant %s)\n", esc(st.AgentID), esc(st.Tenant))
	fmt.Fprintf(tw, "version\t%s %s/%s on %s\n", esc(st.AgentVersion), esc(st.OS), esc(st.Arch), esc(st.Hostname))
	fmt.Fprintf(tw, "up\t%s (since %s)\n", ago(ms(st.StartedAt)), ms(st.StartedAt).UTC().Format(time.RFC3339))
	certLeft := ms(st.CertNotAfter).Sub(now).Round(time.Minute)
	fmt.Fprintf(tw, "certificate\texpires %s (in %s)\n", ms(st.CertNotAfter).UTC().Format(time.RFC3339), certLeft)
	fmt.Fprintf(tw, "streams\t%d open, %d total\n", st.StreamsOpen, st.StreamsTotal)
	fmt.Fprintf(tw, "bytes\t%d to services, %d from services\n", st.BytesOut, st.BytesIn)
	fmt.Fprintf(tw, "services\t%s\n", escNone(strings.Join(st.Services, ", ")))
	hash := st.ConfigHash
	if len(hash) > 12 {
		hash = hash[:12]
	}
	fmt.Fprintf(tw, "config\t%s\n", esc(hash))
	if st.ConfigError != "" {
		fmt.Fprintf(tw, "config error\t%s (the previous config stays in force)\n", esc(st.ConfigError))
	}
	if st.ProxyCAError != "" {
		fmt.Fprintf(tw, "proxy CA error\t%s (the proxy CAs last loaded stay in force)\n", esc(st.ProxyCAError))
	}
	if u := st.Update; u != nil {
		line := fmt.Sprintf("%s (from %s) %s", esc(u.Version), esc(u.From), esc(u.State))
		switch u.State {
		case "trial":
			line = fmt.Sprintf("trying %s (from %s)", esc(u.Version), esc(u.From))
		case "applied":
			line = fmt.Sprintf("%s (from %s) applied, confirming itself", esc(u.Version), esc(u.From))
		case "probation":
			line = fmt.Sprintf("%s (from %s) on probation", esc(u.Version), esc(u.From))
			if !u.ProbationEnds.IsZero() {
				line += fmt.Sprintf(" until %s (in %s)", u.ProbationEnds.UTC().Format(time.RFC3339), u.ProbationEnds.Sub(now).Round(time.Second))
			}
		}
		if u.UncleanStops > 0 {
			line += fmt.Sprintf("; %d stops without a clean exit, the previous version comes back at %d", u.UncleanStops, u.UncleanStopsMax)
		}
		fmt.Fprintf(tw, "update\t%s\n", line)
	}
	if st.AccessLog != "" {
		fmt.Fprintf(tw, "access log\t%s\n", esc(st.AccessLog))
	}
	if st.AccessLogKey != "" {
		line := esc(st.AccessLogKey)
		if !st.AccessLogKeySince.IsZero() {
			line += fmt.Sprintf(", in force since %s", st.AccessLogKeySince.UTC().Format(time.RFC3339))
		}
		if st.AccessLogKeyRotation != "" {
			line += fmt.Sprintf(", replaced every %s", esc(st.AccessLogKeyRotation))
		}
		fmt.Fprintf(tw, "access log key\t%s (the first key's fingerprint, recorded at enrolment, stays the pin: access-log --verify --key checks a copy of the log anywhere against it)\n", line)
	}
	if st.AccessLogError != "" {
		fmt.Fprintf(tw, "access log error\t%s\n", esc(st.AccessLogError))
	}
	if st.AccessLogWarning != "" {
		fmt.Fprintf(tw, "access log warning\t%s\n", esc(st.AccessLogWarning))
	}
	if len(st.Cluster) > 0 {
		ids := make([]string, len(st.Cluster))
		for i, r := range st.Cluster {
			ids[i] = esc(r.ID)
			if r.Draining {
				ids[i] += " (draining)"
			}
		}
		fmt.Fprintf(tw, "cluster\t%d relays, best first for this agent: %s\n", len(ids), strings.Join(ids, ", "))
	}
	if len(st.DialFailures) > 0 {
		var parts []string
		for _, name := range slices.Sorted(maps.Keys(st.DialFailures)) {
			parts = append(parts, fmt.Sprintf("%s %d", esc(name), st.DialFailures[name]))
		}
		fmt.Fprintf(tw, "dial failures\t%s\n", strings.Join(parts, ", "))
		fmt.Fprintf(tw, "last dial error\t%s\n", esc(st.LastDialError))
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SLOT\tRELAY\tRELAY ID\tSTATE\tSINCE\tTRANSPORT\tRTT\tLAST ERROR")
	for _, s := range st.Sessions {
		transport, rtt := "-", "-"
		if s.Transport != "" {
			transport = esc(s.Transport)
			if s.TransportWhy != "" {
				transport += " (" + esc(s.TransportWhy) + ")"
			}
		}
		if s.RTTMicros > 0 {
			rtt = (time.Duration(s.RTTMicros) * time.Microsecond).Round(10 * time.Microsecond).String()
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s ago\t%s\t%s\t%s\n", s.Slot, esc(s.Relay), escNone(s.RelayID), esc(s.State), ago(s.Since), transport, rtt, escNone(s.LastError))
	}
	tw.Flush()
}

func orNone(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// esc is s as a human-readable output prints it: the agent's status and
// access log carry text a relay chose (its rejection's message, its ids,
// a stream's backend and service), in which a newline would forge a row
// and an escape sequence hide columns. JSON and YAML output stay as they
// are: their encoders escape it.
func esc(s string) string { return cli.Printable(s) }

// escNone is esc of s, or "-" for "".
func escNone(s string) string { return orNone(esc(s)) }
