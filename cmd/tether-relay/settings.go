package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"

	"github.com/tetherhq/tether/cmd/internal/cli"
	"github.com/tetherhq/tether/relay"
)

// A setting is one setting of serve. Its value comes from its flag
// (--agent-listen) when given, else from its environment variable
// (TETHER_AGENT_LISTEN) when set and not empty, else from its key in the
// config file (agent_listen), else from its default.
type setting struct {
	name  string // the flag's name
	kind  string // what help calls its values: string, duration, int
	def   string // the default, as text
	usage string // one line, for --help
	doc   string // for README's reference table; usage when empty
	list  bool   // the config file may give a YAML list, joined with commas
	// repeat makes the flag repeatable: each use adds a comma-separated
	// item.
	repeat bool
	// fileKey is the config file's key, when not the flag's name with
	// "_" for "-".
	fileKey string
	// node, when set, turns the config file's value into the setting's
	// text (for values that are not scalars or lists of them).
	node func(v *yaml.Node) (string, error)
	env  string // the environment variable, when not TETHER_<NAME>
	// set parses text into o, or says what is wrong with it.
	set func(o *serveOptions, text string) error
	// get is o's value in canonical text, to compare and to log.
	get func(o *serveOptions) string
	// live, when set, makes the setting one a running relay applies when
	// the config file changes; the others take effect at the next start.
	// An error leaves the running value in place.
	live func(ctx context.Context, rt *liveRelay, o *serveOptions) error
}

// key is the setting's key in the config file.
func (s *setting) key() string {
	if s.fileKey != "" {
		return s.fileKey
	}
	return strings.ReplaceAll(s.name, "-", "_")
}

// envVar is the setting's environment variable: TETHER_<NAME> (such as
// TETHER_AGENT_LISTEN) but where that is tetherctl's.
func (s *setting) envVar() string {
	if s.env != "" {
		return s.env
	}
	return "TETHER_" + strings.ToUpper(s.key())
}

// serveOptions are serve's settings, parsed.
type serveOptions struct {
	relay      relay.Config
	kekFile    string // the file of relay.CAKEK
	transports string
	adminSSO   string // the file AdminSSO was read from
	logLevel   slog.Level
	logFormat  string
}

// liveRelay is what live settings change in a running relay.
type liveRelay struct {
	level *slog.LevelVar
	relay *relay.Relay
}

// serveSettings returns every setting of serve. Each is a flag, an
// environment variable and a config file key; README's reference table
// is generated from this list (TestREADMESettings).
func serveSettings() []*setting {
	str := func(name string, field func(*serveOptions) *string, def, usage, doc string) *setting {
		return &setting{name: name, kind: "string", def: def, usage: usage, doc: doc,
			set: func(o *serveOptions, v string) error { *field(o) = v; return nil },
			get: func(o *serveOptions) string { return *field(o) }}
	}
	dur := func(name string, field func(*serveOptions) *time.Duration, def time.Duration, usage, doc string) *setting {
		return &setting{name: name, kind: "duration", def: durText(def), usage: usage, doc: doc,
			set: func(o *serveOptions, v string) error {
				d, err := time.ParseDuration(v)
				if err != nil {
					return errors.New("want a duration such as 10s, 5m or 1h30m")
				}
				if d < 0 {
					return errors.New("must not be negative")
				}
				*field(o) = d
				return nil
			},
			get: func(o *serveOptions) string { return durText(*field(o)) }}
	}
	num := func(name string, field func(*serveOptions) *int, def int, usage, doc string) *setting {
		return &setting{name: name, kind: "int", def: strconv.Itoa(def), usage: usage, doc: doc,
			set: func(o *serveOptions, v string) error {
				n, err := strconv.Atoi(v)
				if err != nil {
					return errors.New("want a whole number")
				}
				if n < 0 {
					return errors.New("must not be negative")
				}
				*field(o) = n
				return nil
			},
			get: func(o *serveOptions) string { return strconv.Itoa(*field(o)) }}
	}
	c := func(o *serveOptions) *relay.Config { return &o.relay }
	withEnv := func(env string, s *setting) *setting { s.env = env; return s }
	return []*setting{
		str("data-dir", func(o *serveOptions) *string { return &c(o).DataDir }, defaultDataDir,
			"the relay's data directory (CA, store, audit log)",
			"the data directory: CA, store, audit log; created (mode 0700) at the first start"),
		{name: "store", kind: "string",
			usage: "the store of a cluster of relays, a postgres:// URL, which holds the CA too (default: SQLite in the data directory)",
			doc:   "the store of a [cluster of relays](#one-ca-for-a-cluster-of-relays): a `postgres://USER:PASSWORD@HOST:PORT/DB` URL. It holds the CA too, its private keys sealed with the key-encryption key (`ca_kek_file`, or `TETHER_CA_KEK`), which is then required. Default: SQLite in the data directory, with the CA in `DATA-DIR/ca`",
			set: func(o *serveOptions, v string) error {
				if err := checkStore(v); err != nil {
					return err
				}
				o.relay.Store = v
				return nil
			},
			get: func(o *serveOptions) string { return redactStore(o.relay.Store) }},
		str("ca-kek-file", func(o *serveOptions) *string { return &o.kekFile }, "",
			"file of the key-encryption key that seals the CA's keys in a PostgreSQL store (or the key itself in TETHER_CA_KEK)",
			"file holding the key-encryption key (32 random bytes in base64, the same on every relay of the cluster) that seals the CA's private keys in a PostgreSQL store; or give the key itself in `TETHER_CA_KEK`, not both. Required with a PostgreSQL `store`"),
		str("relay-id", func(o *serveOptions) *string { return &c(o).RelayID }, "",
			"this relay's id in its cluster, a DNS label (default: kept in the data directory, made from the host name)",
			"this relay's id in its cluster, a DNS label unique among the relays sharing the store (default: kept in the data directory as `relay-id`, made from the host name at the first start; the file holds the id on one line ended by a newline, and one cut short by a crash is refused rather than read as another id: give `--relay-id` then)"),
		str("advertise", func(o *serveOptions) *string { return &c(o).Advertise }, "",
			"host:port at which agents reach this relay on its own (default on PostgreSQL: the agent address when it names a host)",
			"host:port of this relay's agent port as agents reach it on its own: the relays of a [cluster](#running-several-relays) tell their agents each other's, so that agents keep their connections on distinct relays. Default on PostgreSQL: the agent address when it names a host; with none (and always for a relay alone on SQLite), agents are not told of this relay and keep the address they were configured with"),
		str("peer-listen", func(o *serveOptions) *string { return &c(o).PeerListen }, relay.Off,
			"relay-to-relay listener, where the cluster's other relays forward streams for the agents connected here",
			"relay-to-relay listener (mutual TLS with relay certificates from the cluster's CA), where the other relays of a [cluster](#running-several-relays) forward streams for the agents connected here. `off`: this relay forwards to others but takes no forwarded streams"),
		str("advertise-peer", func(o *serveOptions) *string { return &c(o).AdvertisePeer }, "",
			"host:port at which the other relays reach the peer listener (default: its address when it names a host)", ""),
		str("agent-listen", func(o *serveOptions) *string { return &c(o).AgentListen }, relay.DefaultAgentListen,
			"agent address, UDP (QUIC) and TCP (TLS+yamux) on the same port",
			"agents, on UDP (QUIC) and TCP (TLS+yamux, enrolment) on the same port"),
		{name: "transports", kind: "string", def: "quic,tcp", list: true,
			usage: "agent transports to serve: quic, tcp or both",
			doc:   "agent transports to serve: `quic`, `tcp` or both (in the file, a string or a list)",
			set: func(o *serveOptions, v string) error {
				var quic, tcp bool
				for _, t := range strings.Split(v, ",") {
					switch strings.TrimSpace(t) {
					case "quic":
						quic = true
					case "tcp":
						tcp = true
					default:
						return errors.New("want quic, tcp or quic,tcp")
					}
				}
				o.transports = v
				o.relay.DisableQUIC, o.relay.DisableTCP = !quic, !tcp
				return nil
			},
			get: func(o *serveOptions) string {
				var ts []string
				if !o.relay.DisableQUIC {
					ts = append(ts, "quic")
				}
				if !o.relay.DisableTCP {
					ts = append(ts, "tcp")
				}
				return strings.Join(ts, ",")
			}},
		str("socks-listen", func(o *serveOptions) *string { return &c(o).SOCKSListen }, "127.0.0.1:1080",
			`SOCKS5 front door ("off" to disable)`,
			"SOCKS5 front door (`off` disables it). Plain text: beyond loopback, API keys cross the network in the clear (the relay warns)"),
		str("connect-listen", func(o *serveOptions) *string { return &c(o).ConnectListen }, "127.0.0.1:3128",
			`HTTP CONNECT front door and Go Dialer endpoint ("off" to disable)`,
			"HTTP CONNECT front door and Go Dialer endpoint (`off` disables it). Plain text, like the SOCKS5 door: across hosts use the TLS door"),
		str("connect-tls-listen", func(o *serveOptions) *string { return &c(o).ConnectTLSListen }, relay.Off,
			"HTTP CONNECT front door over TLS, where backends may also use client certificates",
			"the CONNECT front door over TLS (the relay's certificate from its CA); backends may authenticate there with a client certificate too. The door to use across hosts"),
		{name: "forward", fileKey: "forwards", kind: "LISTEN=SERVICE.TENANT@BACKEND", repeat: true, node: forwardsNode,
			usage: "relay-side forward, e.g. 127.0.0.1:15432=db.acme@billing: connections there reach that service as that backend (repeatable; changes live with the config file)",
			doc: "relay-side [forwards](#relay-side-forwards): listeners whose every connection becomes a stream to one tenant service, opened as one registered backend, whose grants decide at each connection. " +
				"Flag (repeatable) and `TETHER_FORWARDS` (comma-separated): `LISTEN=SERVICE.TENANT@BACKEND`; in the file a list of `{listen, target, backend}`. " +
				"**Anyone who can reach a forward acts as its backend** (the relay warns beyond loopback). A backend that is not registered stops the relay at start. **Live**: a changed config file adds, removes and changes forwards without a restart",
			set: func(o *serveOptions, v string) error {
				o.relay.Forwards = nil
				if v == "" {
					return nil
				}
				var errs []error
				for _, item := range strings.Split(v, ",") {
					f, err := relay.ParseForward(strings.TrimSpace(item))
					if err != nil {
						errs = append(errs, err)
						continue
					}
					o.relay.Forwards = append(o.relay.Forwards, f)
				}
				return errors.Join(errs...)
			},
			get: func(o *serveOptions) string {
				items := make([]string, len(o.relay.Forwards))
				for i, f := range o.relay.Forwards {
					items[i] = f.String()
				}
				return strings.Join(items, ",")
			},
			live: func(ctx context.Context, rt *liveRelay, o *serveOptions) error {
				return rt.relay.SetForwards(ctx, o.relay.Forwards)
			}},
		str("oidc-issuer", func(o *serveOptions) *string { return &c(o).OIDC.Issuer }, "",
			"accept bearer tokens (JWT) from this OpenID Connect issuer at the CONNECT front doors", ""),
		str("oidc-audience", func(o *serveOptions) *string { return &c(o).OIDC.Audience }, "",
			"audience bearer tokens must be for (required with --oidc-issuer)", ""),
		str("oidc-jwks-url", func(o *serveOptions) *string { return &c(o).OIDC.JWKSURL }, "",
			"the issuer's key set (default: from its discovery document)",
			"the issuer's key set, if not its discovery document's `jwks_uri`"),
		str("oidc-backend-claim", func(o *serveOptions) *string { return &c(o).OIDC.BackendClaim }, "sub",
			"token claim naming the backend (a registered backend; its grants apply)", ""),
		str("oidc-tenant-claim", func(o *serveOptions) *string { return &c(o).OIDC.TenantClaim }, "tether_tenants",
			"token claim listing the tenants the token is for (required in every token)",
			"token claim listing the tenants the token is for: a name, `*`, or an array (required in every token)"),
		str("trust-domain", func(o *serveOptions) *string { return &c(o).TrustDomain }, "tether.internal",
			"SPIFFE trust domain of a new CA (first start, or tether-relay init, only)",
			"SPIFFE trust domain of a new CA (first start, or `tether-relay init`, only; a relay whose CA has another logs a warning)"),
		dur("agent-cert-lifetime", func(o *serveOptions) *time.Duration { return &c(o).AgentCertLifetime }, 24*time.Hour,
			"validity of agent certificates; agents renew them, with a fresh key, when a third remains",
			"validity of agent certificates; agents renew over their control stream, with a fresh key, when a third of it remains (at least `30s`; an agent offline longer than this must enrol again)"),
		str("audit-log", func(o *serveOptions) *string { return &c(o).AuditLog }, "",
			"file receiving one JSON line per audit record (default DATA-DIR/audit.log)",
			"file receiving one JSON line per audit record (default `DATA-DIR/audit.log`); admin commands append to the same file (they read `audit_log` from the config file)"),
		dur("audit-traffic-retention", func(o *serveOptions) *time.Duration { return &c(o).AuditTrafficRetention }, 0,
			"delete the store's audit records of traffic (streams, agent connections and handshakes, summed refusals) older than this, such as 2160h for 90 days (0: keep for ever)",
			"delete from the store the audit records of traffic older than this: kinds `stream`, `agent.connect`, `agent.handshake` and `auth.refused`, the records that grow with the traffic (about 8.6 million rows, 4 GB in PostgreSQL, a day at 100 streams/s). Every other record (enrolments, renewals, revocations, tokens, backends, limits, the CA, operators, releases) is kept for good. At start and every 10 minutes, in batches of 1000 rows a transaction; each run that deletes records writes an `audit.prune` record (how many of each kind, older than when) and counts them in `tether_audit_pruned_total`. Records deleted are gone from `tetherctl audit`, the admin API and the console; the audit file keeps them (see [Audit trail growth and retention](#audit-trail-growth-and-retention)). `0` keeps them for ever; otherwise at least `1h`; recommended `2160h` (90 days)"),
		{name: "audit-file-max-size", kind: "size", def: "0",
			usage: "rotate the audit file once it holds this much, such as 1GiB (0: never)",
			doc:   "rotate the audit file once it holds this much (or one batch of records more): it is synced, renamed beside itself to `audit.log.<UTC time>` (such as `audit.log.20261207T195633.123456789Z`) and a new file opened, so the trail's records are whole lines, each in one file, in order. The relay reads the rotated files too, to store records it had not stored before a restart and to replay a restore. A size such as `1GiB`, at least `1MiB`; `0` never rotates (the file grows about 3.4 GB a day at 100 streams/s). Admin commands do not rotate it. Do not rotate it with logrotate (see [Audit trail growth and retention](#audit-trail-growth-and-retention))",
			set: func(o *serveOptions, v string) error {
				n, err := cli.ParseBytes(v)
				if err != nil {
					return err
				}
				if n > 0 && n < relay.MinAuditFileMaxSize {
					return fmt.Errorf("%s is less than 1MiB", v)
				}
				o.relay.AuditFileMaxSize = n
				return nil
			},
			get: func(o *serveOptions) string {
				if o.relay.AuditFileMaxSize == 0 {
					return "0"
				}
				return strings.ReplaceAll(cli.Bytes(uint64(o.relay.AuditFileMaxSize)), " ", "")
			}},
		num("audit-file-max-files", func(o *serveOptions) *int { return &c(o).AuditFileMaxFiles }, 0,
			"rotated audit files kept; the oldest beyond are removed, but not those written after the newest backup (0: keep all)",
			"rotated audit files kept (with `audit_file_max_size`); the oldest beyond are removed, except those rotated after the newest `tether-relay backup` of the data directory, which a restore from it replays (the relay warns while it keeps more). `0` keeps every rotated file: moving them away (to an archive) is the operator's"),
		dur("heartbeat", func(o *serveOptions) *time.Duration { return &c(o).HeartbeatInterval }, 10*time.Second,
			"control-stream heartbeat interval",
			"control-stream ping interval of idle sessions; three missed ones drop the session (see [agents that stop answering](#agents-that-stop-answering) for sessions with streams)"),
		dur("update-interval", func(o *serveOptions) *time.Duration { return &c(o).UpdateInterval }, 5*time.Second,
			"how often the active rollout's release is offered to agents that have not had it", ""),
		{name: "token-retention", kind: "duration", def: durText(relay.DefaultTokenRetention),
			usage: "delete join tokens that expired, or were used up, longer ago than this (a used-up token is dated by its creation); 0: keep them",
			doc:   "how long a join token that can enrol no more agents stays: one that expired, or whose every use was taken, longer ago than this is deleted at the relay's start and every 10 minutes, with a `token.purge` audit record per tenant (a used-up token is dated by its creation: it does not record its last use). `0` keeps them until `token revoke`",
			set: func(o *serveOptions, v string) error {
				d, err := time.ParseDuration(v)
				if err != nil {
					return errors.New("want a duration such as 720h or 168h")
				}
				if d < 0 {
					return errors.New("must not be negative (0 keeps join tokens)")
				}
				if d == 0 {
					d = -1 // never: relay.Config's 0 is the default
				}
				o.relay.TokenRetention = d
				return nil
			},
			get: func(o *serveOptions) string { return durText(max(o.relay.TokenRetention, 0)) }},
		dur("stream-open-timeout", func(o *serveOptions) *time.Duration { return &c(o).StreamOpenTimeout }, 15*time.Second,
			"limit on opening a stream through an agent",
			"limit on opening a stream through an agent (includes the agent's dial)"),
		dur("idle-timeout", func(o *serveOptions) *time.Duration { return &c(o).IdleTimeout }, time.Hour,
			"close tunnelled connections idle this long",
			"close tunnelled connections idle in both directions this long"),
		dur("drain-timeout", func(o *serveOptions) *time.Duration { return &c(o).DrainTimeout }, 10*time.Second,
			"on shutdown, wait this long for tunnelled connections",
			"on SIGTERM/SIGINT, wait this long for open tunnels; the GoAway tells agents, which keep those tunnels open as long (at most 1 h)"),
		dur("reconnect-grace", func(o *serveOptions) *time.Duration { return &c(o).ReconnectGrace }, 30*time.Second,
			"after start, streams to tenants whose agents were connected before wait this long for them to return",
			"after a start, a stream to a tenant whose agents were connected before the stop waits (up to the stream-open timeout) for one to return instead of failing with `no_agent`"),
		{name: "store-outage-grace", kind: "duration", def: durText(relay.DefaultStoreOutageGrace),
			usage: "while the store is down for every relay of the cluster, serve new connections from what was last read for at most this long (0: refuse, as a relay cut off alone does)",
			doc: "while PostgreSQL is down for every relay of the [cluster](#running-several-relays) (each it can ask says so), serve new connections from what the relay last read — grants, limits, revocations, backends' credentials, the records of agents it admitted before — for at most this long after it last reached the store, instead of refusing them with `unavailable` 15 s after; a revocation written to the store meanwhile applies once it is back (see **A store down for every relay**). " +
				"`0` turns it off: the relay refuses new connections 15 s after it last reached the store, as it does when it alone is cut off",
			set: func(o *serveOptions, v string) error {
				d, err := time.ParseDuration(v)
				if err != nil {
					return errors.New("want a duration such as 10s, 5m or 1h30m")
				}
				if d < 0 {
					return errors.New("must not be negative (0 turns it off)")
				}
				if d == 0 {
					d = -1 // off: relay.Config's 0 is the default
				}
				o.relay.StoreOutageGrace = d
				return nil
			},
			get: func(o *serveOptions) string { return durText(max(o.relay.StoreOutageGrace, 0)) }},
		num("max-handshakes", func(o *serveOptions) *int { return &c(o).MaxHandshakes }, 512,
			"agent handshakes in progress at once; more wait up to 8s, then are turned away to retry",
			"agent handshakes (TLS and hello) and enrolments in progress at once; a connection that finds no slot within 8 s is closed and its agent retries after its jittered backoff, so a restart does not become a login storm (over TCP the connection is closed before TLS, and the agent reports the failed TLS handshake; over QUIC the hello waits for the slot and the connection is closed with the refusal `unavailable: relay busy: too many agent handshakes in progress`, which the agent logs and shows in its status as `relay refused this agent: …`). QUIC completes TLS before the relay sees the connection, so at most `max_quic_handshakes` QUIC TLS handshakes run at once; a QUIC connection beyond that is refused at its first packet, before any TLS work, and its agent tries QUIC again at a random moment within 5 s, a window that doubles with each refusal in a row up to the agent's `reconnect.max` (it does not fall back to TCP for that: a refusal costs the relay one packet)"),
		num("max-quic-handshakes", func(o *serveOptions) *int { return &c(o).MaxQUICTLSHandshakes }, 0,
			"QUIC TLS handshakes in progress at once; more are refused at their first packet and retry soon (0: 8 x --max-handshakes)",
			"the bound on QUIC TLS handshakes in progress described above (0: 8 × `max_handshakes`)"),
		num("max-handshakes-per-address", func(o *serveOptions) *int { return &c(o).MaxHandshakesPerAddress }, 32,
			"agent handshakes and enrolments in progress at once from one source address; more are turned away at once",
			"agent handshakes and enrolments (TCP and QUIC together) in progress at once from one source address, so that a flood of connections from one place cannot hold the slots of `max_handshakes` that agents elsewhere need; a connection beyond it is closed at once (over QUIC refused at its first packet) and its agent retries after its backoff. A QUIC source that has used half its bound must prove its address (a Retry) before it counts, so forged source addresses cannot use up another's bound. Raise it for sites with many agents behind one NAT address"),
		num("max-handshakes-per-network", func(o *serveOptions) *int { return &c(o).MaxHandshakesPerNetwork }, 128,
			"agent handshakes and enrolments in progress at once from one /24 (IPv4) or /56 (IPv6), and at most 1/16 of --max-handshakes while more than half of it is taken; more are turned away at once",
			"the same bound for one source network: a /24 for IPv4, a /56 for IPv6 (a site's allocation: each of its hosts may have a /64 of its own). While more than half of the slots of `max_handshakes` are taken, a network may have at most a sixteenth of them in progress (32 of the default 512; at least 1), or this bound if it is lower, so that filling the slots takes many networks rather than four; a connection beyond that share is turned away in the same way and counts as `source_limited`. A big site behind one NAT still has this whole bound while the relay is not busy; set this bound to `max_handshakes` or more to lift the share too (one network then has no bound of its own)"),
		num("max-front-pending-per-address", func(o *serveOptions) *int { return &c(o).MaxFrontPendingPerAddress }, 256,
			"front-door connections not yet authenticated from one source address; more are closed at once",
			"front-door connections (SOCKS5, CONNECT, CONNECT over TLS) not yet authenticated from one source address, and relay-side forward connections whose stream is not open yet (a forward asks for no credential); more are closed at once"),
		num("max-front-pending-per-network", func(o *serveOptions) *int { return &c(o).MaxFrontPendingPerNetwork }, 1024,
			"front-door connections not yet authenticated from one /24 (IPv4) or /56 (IPv6); more are closed at once",
			"the same bound for one source network (a /24 or /56)"),
		{name: "max-stream-memory", kind: "size", def: "",
			usage: "cap on what open streams may make the relay hold at worst, such as 8GiB; past it new streams are refused (default: half the memory)",
			doc:   "cap on the memory that the open streams may make the relay hold, those through its front doors and those other relays of a [cluster](#running-several-relays) forward to its agents together: each is charged its worst case while open, so that backends or agents that never read cannot exhaust the relay. A stream through a front door holds a full receive window and two copy buffers (2.5 MiB over TCP, 6.5 MiB over QUIC, 2.5 MiB forwarded over a link to another relay; 6.5 MiB while it opens); a forwarded stream, at the relay holding its agent, two full receive windows, the link's and the agent stream's, and two copy buffers (4.5 MiB to an agent over TCP, 8.5 MiB over QUIC; 8.5 MiB while it opens), the most any one stream is charged, and so the least the cap may be. A stream past the cap is refused with `unavailable`, naming the cap (a forwarded one by the holding relay, before it reads past the request: the entry relay tries another relay holding the tenant's agents, and answers `unavailable` with that reason when none takes it). The cap is shared fairly between tenants: while at most three quarters of it are held, any tenant's stream is charged up to that; past it, a tenant may hold at most a quarter of the cap, and never less than the worst case of the stream it opens (its share), its streams through the front doors and forwarded ones counted together, and a stream past its share is refused with `unavailable`, naming the tenant, its share and the cap. One tenant whose backends hold streams open thus takes at most three quarters of the cap, and the last quarter stays for the others (a relay serving one tenant gives it three quarters of the cap: size the cap for that). Refusals are counted in `tether_stream_memory_refusals_total` (reason `cap` or `tenant_share`) by the relay that refused, and `tether_stream_memory_held_bytes` (and `/debug/tether`'s `stream_memory_held_bytes`) shows what is held. A size such as `8GiB`, at least 8.5 MiB. Default: half the memory of the machine, or of the relay's cgroup when lower",
			set: func(o *serveOptions, v string) error {
				if v == "" {
					o.relay.MaxStreamMemory = 0 // the default
					return nil
				}
				n, err := cli.ParseBytes(v)
				if err != nil {
					return err
				}
				if n > 0 && n < relay.StreamMemoryWorstCase {
					return fmt.Errorf("%s is less than one stream's worst case (%s)", v, cli.Bytes(uint64(relay.StreamMemoryWorstCase)))
				}
				o.relay.MaxStreamMemory = n
				return nil
			},
			get: func(o *serveOptions) string {
				if o.relay.MaxStreamMemory == 0 {
					return ""
				}
				return strings.ReplaceAll(cli.Bytes(uint64(o.relay.MaxStreamMemory)), " ", "")
			}},
		str("download-listen", func(o *serveOptions) *string { return &c(o).DownloadListen }, relay.Off,
			"serve --download-dir (agent binaries, install scripts) and the CA over HTTPS on this address, for the install scripts",
			"serve `download_dir` and the CA at `/ca.der` over HTTPS with the relay's certificate, for the install scripts"),
		str("download-dir", func(o *serveOptions) *string { return &c(o).DownloadDir }, "",
			"directory of agent binaries and install scripts (scripts/release makes one)", ""),
		str("metrics-listen", func(o *serveOptions) *string { return &c(o).MetricsListen }, relay.Off,
			"Prometheus /metrics, /healthz and /readyz on this address (unauthenticated; names tenants)",
			"Prometheus `/metrics`, `/healthz` and `/readyz` on this address (unauthenticated; metrics name tenants)"),
		str("admin-listen", func(o *serveOptions) *string { return &c(o).AdminListen }, relay.Off,
			"admin API (HTTPS; operator token or certificate) on this address; see tether-relay operator",
			"the [admin API](#admin-api-and-tetherctl) over HTTPS on this address (authenticated: operator token, operator certificate, session or single sign-on)"),
		// TETHER_ADMIN_CERT and TETHER_ADMIN_KEY are tetherctl's
		// operator certificate: a shell set up for tetherctl must not give
		// the relay its listener's.
		withEnv("TETHER_ADMIN_SERVER_CERT", str("admin-cert", func(o *serveOptions) *string { return &c(o).AdminCertFile }, "",
			"admin listener certificate (PEM; default: one from the relay CA, see tether-relay ca export)",
			"the admin listener's certificate (PEM), e.g. one with the host name browsers use; default one from the relay CA. Watched: a renewed file is served without a restart. Its variable is not `TETHER_ADMIN_CERT`, tetherctl's operator certificate")),
		withEnv("TETHER_ADMIN_SERVER_KEY", str("admin-key", func(o *serveOptions) *string { return &c(o).AdminKeyFile }, "",
			"admin listener key (PEM; with --admin-cert)", "the admin listener's key (PEM), with `admin_cert`. Its variable is not `TETHER_ADMIN_KEY`, tetherctl's")),
		dur("admin-session-ttl", func(o *serveOptions) *time.Duration { return &c(o).AdminSessionTTL }, 12*time.Hour,
			"lifetime of browser sessions opened at the admin listener's /login",
			"lifetime of browser sessions opened at `/login` or by single sign-on (never beyond the token's or certificate's expiry)"),
		{name: "admin-sso", kind: "string",
			usage: "YAML file of the console's single sign-on: OpenID Connect issuers and how claims map to roles and tenants",
			doc:   "a YAML file configuring [single sign-on](#single-sign-on) to the console: OpenID Connect issuers and how claims map to roles and tenants",
			set: func(o *serveOptions, v string) error {
				o.adminSSO, o.relay.AdminSSO = v, relay.AdminSSOConfig{}
				if v == "" {
					return nil
				}
				data, err := os.ReadFile(v)
				if err != nil {
					return err
				}
				o.relay.AdminSSO, err = relay.ParseAdminSSO(data)
				return err
			},
			get: func(o *serveOptions) string { return o.adminSSO }},
		str("debug-listen", func(o *serveOptions) *string { return &c(o).DebugListen }, relay.Off,
			"pprof and /debug/tether on this address (loopback only; unauthenticated)",
			"Go pprof profiles and `/debug/tether` (live counts, memory; `?gc=1` collects first) on this address: unauthenticated, so a loopback address only (127.0.0.1, ::1 or localhost)"),
		{name: "log-level", kind: "string", def: "info",
			usage: "debug, info, warn or error (changes live with the config file)",
			doc:   "`debug`, `info`, `warn` or `error`. **Live**: a changed config file applies it without a restart",
			set: func(o *serveOptions, v string) error {
				lv, err := cli.ParseLevel(v)
				if err != nil {
					return errors.New("want debug, info, warn or error")
				}
				o.logLevel = lv
				return nil
			},
			get:  func(o *serveOptions) string { return strings.ToLower(o.logLevel.String()) },
			live: func(_ context.Context, rt *liveRelay, o *serveOptions) error { rt.level.Set(o.logLevel); return nil }},
		{name: "log-format", kind: "string", def: "auto",
			usage: "json, text or auto (text on a terminal)",
			doc:   "`json`, `text` or `auto` (JSON unless stderr is a terminal)",
			set: func(o *serveOptions, v string) error {
				switch v {
				case "json", "text", "auto":
					o.logFormat = v
					return nil
				}
				return errors.New("want json, text or auto")
			},
			get: func(o *serveOptions) string { return o.logFormat }},
	}
}

// durText is d as people write it: "24h", "1h30m", "10s".
func durText(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}

// flagValue is a setting's flag. It keeps the text given and checks
// nothing, so that serve checks every setting once, whatever its source,
// and reports every problem together.
type flagValue struct {
	text, kind string
	repeat     bool // each Set adds an item
	set        bool // Set was called
}

func (v *flagValue) Set(s string) error {
	if v.repeat && v.set {
		v.text += "," + s
	} else {
		v.text = s
	}
	v.set = true
	return nil
}
func (v *flagValue) String() string { return v.text }
func (v *flagValue) Type() string   { return v.kind }

// addSettingFlags adds the flags of settings to fs, but those named in
// skip (global flags the root has already).
func addSettingFlags(fs *pflag.FlagSet, settings []*setting, skip ...string) {
	for _, s := range settings {
		if slices.Contains(skip, s.name) {
			continue
		}
		fs.Var(&flagValue{text: s.def, kind: s.kind, repeat: s.repeat}, s.name, s.usage)
	}
}

// origin is where a setting's value came from.
type origin struct {
	text  string
	where string // "--heartbeat", "TETHER_HEARTBEAT", "relay.yaml:4: heartbeat", "default"
	flag  bool
}

// resolve works out every setting from flags (those given), the
// environment, the config file (nil for none) and the defaults, in that
// order, and checks each value once: the error lists every problem, those
// of the file first (fileErr, readConfigFile's).
func resolve(settings []*setting, flags *pflag.FlagSet, env func(string) string, file *configFile, fileErr error) (serveOptions, map[string]origin, error) {
	var o serveOptions
	from := make(map[string]origin, len(settings))
	var probs problems
	if fileErr != nil && !errors.As(fileErr, &probs) {
		return o, nil, fileErr
	}
	bad := make(map[string]bool) // settings whose value is a problem
	for _, s := range settings {
		or := origin{text: s.def, where: "default"}
		if f := flags.Lookup(s.name); f != nil && f.Changed {
			or = origin{text: f.Value.String(), where: "--" + s.name, flag: true}
		} else if v := env(s.envVar()); v != "" {
			or = origin{text: v, where: s.envVar()}
		} else if fv, ok := file.value(s.key()); ok {
			or = origin{text: fv.text, where: fmt.Sprintf("%s:%d: %s", file.path, fv.line, s.key())}
		}
		from[s.name] = or
		if err := s.set(&o, or.text); err != nil {
			probs = append(probs, problem{where: or.where, text: or.text, err: err, flag: or.flag})
			bad[s.name] = true
		}
	}
	probs = append(probs, checkTogether(settings, o, from, bad)...)
	if len(probs) > 0 {
		return o, from, probs
	}
	return o, from, nil
}

// configSettings are the settings that give each field of relay.Config
// that relay.Config.Check may name.
var configSettings = map[string][]string{
	"DataDir": {"data-dir"}, "DisableQUIC": {"transports"}, "DisableTCP": {"transports"},
	"AgentListen": {"agent-listen"}, "SOCKSListen": {"socks-listen"}, "ConnectListen": {"connect-listen"},
	"ConnectTLSListen": {"connect-tls-listen"}, "MetricsListen": {"metrics-listen"}, "DebugListen": {"debug-listen"},
	"AdminListen": {"admin-listen"}, "DownloadListen": {"download-listen"}, "PeerListen": {"peer-listen"},
	"Advertise": {"advertise"}, "AdvertisePeer": {"advertise-peer"},
	"OIDC":     {"oidc-issuer", "oidc-audience", "oidc-jwks-url", "oidc-backend-claim", "oidc-tenant-claim"},
	"Forwards": {"forward"}, "AdminSSO": {"admin-sso"}, "AdminCertFile": {"admin-cert"}, "AdminKeyFile": {"admin-key"},
	"MaxStreamMemory": {"max-stream-memory"}, "MaxHandshakes": {"max-handshakes"}, "MaxQUICTLSHandshakes": {"max-quic-handshakes"},
	"MaxHandshakesPerAddress": {"max-handshakes-per-address"}, "MaxHandshakesPerNetwork": {"max-handshakes-per-network"},
	"MaxFrontPendingPerAddress": {"max-front-pending-per-address"}, "MaxFrontPendingPerNetwork": {"max-front-pending-per-network"},
	"AgentCertLifetime": {"agent-cert-lifetime"}, "HeartbeatInterval": {"heartbeat"}, "StreamOpenTimeout": {"stream-open-timeout"},
	"IdleTimeout": {"idle-timeout"}, "DrainTimeout": {"drain-timeout"}, "ReconnectGrace": {"reconnect-grace"},
	"AdminSessionTTL": {"admin-session-ttl"}, "TrustDomain": {"trust-domain"},
	"AuditTrafficRetention": {"audit-traffic-retention"}, "AuditFileMaxSize": {"audit-file-max-size"}, "AuditFileMaxFiles": {"audit-file-max-files"},
}

// checkTogether runs the checks relay.New makes of the whole
// configuration (values that must go together, bounds) on o, so that
// their problems are reported with the others, each naming the settings
// involved and where their values came from. A problem that involves a
// setting already reported (bad) is left out: that value was not set.
func checkTogether(settings []*setting, o serveOptions, from map[string]origin, bad map[string]bool) problems {
	var probs problems
next:
	for _, cp := range o.relay.Check() {
		var names []string
		for _, f := range cp.Fields {
			for _, n := range configSettings[f] {
				if !slices.Contains(names, n) {
					names = append(names, n)
				}
			}
		}
		if len(names) > 1 {
			// Of several settings (OIDC's), name those not left at
			// their default, when there are such.
			var given []string
			for _, n := range names {
				if from[n].where != "default" {
					given = append(given, n)
				}
			}
			if len(given) > 0 {
				names = given
			}
		}
		p := problem{err: cp.Err, where: "settings"}
		var wheres []string
		for _, n := range names {
			if bad[n] {
				continue next
			}
			or, ok := from[n]
			if !ok {
				continue
			}
			p.flag = p.flag || or.flag
			if or.where == "default" {
				wheres = append(wheres, fmt.Sprintf("--%s default %q", n, or.text))
			} else {
				wheres = append(wheres, fmt.Sprintf("%s %q", or.where, or.text))
			}
		}
		if len(wheres) > 0 {
			p.where = strings.Join(wheres, " with ")
		}
		probs = append(probs, p)
	}
	return probs
}

// problem is one invalid setting.
type problem struct {
	where, text string
	err         error
	flag        bool // from a command-line flag
}

func (p problem) String() string {
	if p.text == "" {
		return fmt.Sprintf("%s: %v", p.where, p.err)
	}
	return fmt.Sprintf("%s %q: %v", p.where, p.text, p.err)
}

// problems are every problem found in the settings, reported together.
type problems []problem

func (ps problems) Error() string {
	if len(ps) == 1 {
		return "invalid setting: " + ps[0].String()
	}
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = "  " + p.String()
	}
	return fmt.Sprintf("%d invalid settings:\n%s", len(ps), strings.Join(lines, "\n"))
}

// ExitCode is cli.ExitUsage when a command-line flag is wrong, else
// cli.ExitFailure.
func (ps problems) ExitCode() int {
	for _, p := range ps {
		if p.flag {
			return cli.ExitUsage
		}
	}
	return cli.ExitFailure
}

// configFile is a parsed config file: a YAML mapping of setting keys to
// values.
type configFile struct {
	path   string
	data   []byte
	values map[string]fileValue
}

// fileValue is one key's value and the line it is on.
type fileValue struct {
	text string
	line int
}

func (f *configFile) has(key string) bool {
	_, ok := f.value(key)
	return ok
}

func (f *configFile) value(key string) (fileValue, bool) {
	if f == nil {
		return fileValue{}, false
	}
	v, ok := f.values[key]
	return v, ok
}

// maxConfigFile bounds the config file read.
const maxConfigFile = 1 << 20

// readConfigFile reads and parses the config file at path.
func readConfigFile(path string, settings []*setting) (*configFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxConfigFile+1))
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	if len(data) > maxConfigFile {
		return nil, fmt.Errorf("config file %s is larger than %d KiB", path, maxConfigFile>>10)
	}
	return parseConfig(path, data, settings)
}

// parseConfig parses a config file strictly: a mapping whose keys are
// settings' keys, each at most once, with a single value (a list only for
// settings that take one). A file that is not such a mapping is an error;
// bad keys are problems, each with its line, returned with the file of
// the good ones (so that resolve reports them with its own).
func parseConfig(path string, data []byte, settings []*setting) (*configFile, error) {
	cf := &configFile{path: path, data: data, values: map[string]fileValue{}}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return cf, nil // empty: every setting from elsewhere
		}
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	var more yaml.Node
	if err := dec.Decode(&more); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("config file %s: more than one YAML document", path)
	}
	if len(doc.Content) == 0 {
		return cf, nil
	}
	root := doc.Content[0]
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return cf, nil // only comments
	}
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%s:%d: want settings, one \"key: value\" a line", path, root.Line)
	}
	known := map[string]*setting{}
	var keys []string
	for _, s := range settings {
		known[s.key()] = s
		keys = append(keys, s.key())
	}
	var probs problems
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		where := fmt.Sprintf("%s:%d", path, k.Line)
		if k.Kind != yaml.ScalarNode {
			probs = append(probs, problem{where: where, err: errors.New("a key must be a setting's name")})
			continue
		}
		s := known[k.Value]
		if s == nil {
			err := fmt.Errorf("unknown key %q", k.Value)
			if near := cli.Nearest(k.Value, keys); near != "" {
				err = fmt.Errorf("unknown key %q; did you mean %q?", k.Value, near)
			}
			probs = append(probs, problem{where: where, err: err})
			continue
		}
		if prev, ok := cf.values[k.Value]; ok {
			probs = append(probs, problem{where: where, err: fmt.Errorf("%s is given twice (first on line %d)", k.Value, prev.line)})
			continue
		}
		var text string
		var err error
		if s.node != nil {
			text, err = s.node(v)
		} else {
			text, err = nodeText(v, s.list)
		}
		if err != nil {
			probs = append(probs, problem{where: where + ": " + k.Value, err: err})
			continue
		}
		cf.values[k.Value] = fileValue{text: text, line: k.Line}
	}
	if len(probs) > 0 {
		return cf, probs
	}
	return cf, nil
}

// nodeText is the text of a setting's value: a scalar, or a list of
// scalars joined with commas when list.
func nodeText(v *yaml.Node, list bool) (string, error) {
	if v.Kind == yaml.AliasNode && v.Alias != nil {
		v = v.Alias
	}
	switch {
	case v.Kind == yaml.ScalarNode && v.Tag == "!!null":
		return "", errors.New("no value (leave the key out for the default)")
	case v.Kind == yaml.ScalarNode:
		return v.Value, nil
	case v.Kind == yaml.SequenceNode && list:
		items := make([]string, 0, len(v.Content))
		for _, c := range v.Content {
			if c.Kind != yaml.ScalarNode {
				return "", errors.New("want a list of words")
			}
			items = append(items, c.Value)
		}
		return strings.Join(items, ","), nil
	}
	return "", errors.New("want a single value")
}

// forwardsNode reads the config file's forwards: a list whose items are
// mappings of listen, target and backend (or LISTEN=SERVICE.TENANT@BACKEND
// strings), strictly: an unknown or missing key is an error naming its
// line.
func forwardsNode(v *yaml.Node) (string, error) {
	if v.Kind == yaml.AliasNode && v.Alias != nil {
		v = v.Alias
	}
	if v.Kind == yaml.ScalarNode && v.Tag != "!!null" {
		return v.Value, nil // one forward, or several comma-separated
	}
	if v.Kind != yaml.SequenceNode {
		return "", errors.New("want a list of forwards, each {listen: HOST:PORT, target: SERVICE.TENANT, backend: NAME}")
	}
	items := make([]string, 0, len(v.Content))
	for _, it := range v.Content {
		if it.Kind == yaml.ScalarNode {
			items = append(items, it.Value)
			continue
		}
		if it.Kind != yaml.MappingNode {
			return "", fmt.Errorf("line %d: want a forward {listen, target, backend}", it.Line)
		}
		var f relay.Forward
		fields := map[string]*string{"listen": &f.Listen, "target": &f.Target, "backend": &f.Backend}
		for i := 0; i+1 < len(it.Content); i += 2 {
			k, val := it.Content[i], it.Content[i+1]
			dst, ok := fields[k.Value]
			if k.Kind != yaml.ScalarNode || !ok {
				return "", fmt.Errorf("line %d: unknown key %q in a forward; want listen, target and backend", k.Line, k.Value)
			}
			if val.Kind != yaml.ScalarNode || val.Tag == "!!null" {
				return "", fmt.Errorf("line %d: %s wants a single value", k.Line, k.Value)
			}
			if *dst != "" {
				return "", fmt.Errorf("line %d: %s is given twice", k.Line, k.Value)
			}
			*dst = val.Value
		}
		for _, name := range []string{"listen", "target", "backend"} {
			if *fields[name] == "" {
				return "", fmt.Errorf("line %d: the forward has no %s", it.Line, name)
			}
		}
		if strings.Contains(f.String(), ",") {
			return "", fmt.Errorf("line %d: a forward's values hold no comma", it.Line)
		}
		items = append(items, f.String())
	}
	return strings.Join(items, ","), nil
}
