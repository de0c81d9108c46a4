package relay

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/tetherhq/tether/relay/internal/console"
	"github.com/tetherhq/tether/relay/internal/datadir"
	"github.com/tetherhq/tether/relay/internal/frontdoor"
	"github.com/tetherhq/tether/relay/internal/session"
	"github.com/tetherhq/tether/relay/internal/streammem"
)

// Off disables a listener when used as its address.
const Off = "off"

// Config configures a relay. The zero value of every field except DataDir
// works: defaults are documented per field and applied by New.
type Config struct {
	// DataDir holds the CA, the store and the relay's secrets. Required.
	DataDir string
	// Store is the store of a cluster of relays: a postgres:// URL.
	// Default: SQLite in DataDir, with the CA in DataDir/ca. With
	// PostgreSQL the store holds the CA too, its private keys sealed
	// with CAKEK.
	Store string
	// CAKEK is the key-encryption key (32 random bytes) that seals the
	// CA's private keys in a PostgreSQL store: required with one, the
	// same on every relay of the cluster. Unused with SQLite.
	CAKEK []byte

	// RelayID names this relay in its cluster (a DNS label, unique among
	// the relays sharing the store). Default: the one kept in DataDir,
	// made from the host name at the first start.
	RelayID string
	// Advertise is the address (host:port of the agent port) at which
	// agents reach this relay on its own, sent to the agents of a cluster
	// so that they keep their connections on distinct relays. Default, on
	// PostgreSQL: the agent listener's address when it names a host; with
	// none (":7443"), and always on SQLite (a relay alone),
	// agents are not told of this relay and reach it through the address
	// they were configured with only.
	Advertise string
	// PeerListen is the relay-to-relay listener, where the other relays
	// of a cluster forward streams for the agents connected here (mutual
	// TLS with relay certificates from the cluster's CA). Default "off":
	// this relay forwards to others but takes no forwarded streams.
	PeerListen string
	// AdvertisePeer is the address peers reach PeerListen at. Default:
	// PeerListen's address when it names a host.
	AdvertisePeer string
	// ClusterHeartbeat is how often the relay writes its row in the
	// store and reads the other relays'; ClusterDeadAfter how long after
	// its last heartbeat a relay stops counting; StaleAfter how long a
	// relay on a PostgreSQL store may go without confirming it is current
	// (its heartbeat written and the change feed read) before it refuses
	// new streams with unavailable. Defaults 2s, 10s, 15s.
	ClusterHeartbeat, ClusterDeadAfter, StaleAfter time.Duration
	// StoreOutageGrace is how long, counted from when it was last
	// current, a relay on a PostgreSQL store that has gone StaleAfter
	// without it serves new connections from what it last read (grants,
	// limits, revocations, backends' credentials, the records of agents
	// it admitted before), while no relay of the cluster it can ask
	// reaches the store either (outage.go). A revocation written
	// meanwhile straight to the store (an admin command) applies once
	// the relay reaches the store again. Default 5m; a negative value
	// turns it off: the relay refuses new connections StaleAfter after
	// it was last current, as it does while another relay reaches the
	// store.
	StoreOutageGrace time.Duration
	// backendCacheTTL is how long a backend's credential read from the
	// store is used before it is read again (default 1m; for tests).
	backendCacheTTL time.Duration

	// AgentListen is where agents connect, on the same port number for UDP
	// (QUIC) and TCP (TLS+yamux, and enrolment). Default ":7443".
	AgentListen string
	// DisableQUIC and DisableTCP turn one agent transport off.
	DisableQUIC bool
	DisableTCP  bool

	// SOCKSListen is the SOCKS5 front door; default "127.0.0.1:1080";
	// "off" disables it.
	SOCKSListen string
	// ConnectListen is the HTTP CONNECT front door (also used by the Go
	// Dialer in relay/client); default "127.0.0.1:3128"; "off" disables it.
	ConnectListen string

	// ConnectTLSListen is the HTTP CONNECT front door over TLS, with the
	// relay's certificate from its CA; backends there may authenticate
	// with a client certificate (tether-relay backend certificate) as well
	// as an API key or a bearer token. Default "off".
	ConnectTLSListen string

	// OIDC, when its Issuer is set, lets backends authenticate at the
	// CONNECT front doors with a bearer token from that issuer.
	OIDC OIDCConfig

	// Forwards are relay-side forwards: listeners whose every connection
	// becomes a stream to one tenant service, opened as one registered
	// backend (its grants decide at each connection). Anyone who can
	// reach a forward acts as its backend. Default none; Relay.SetForwards
	// changes them while the relay runs.
	Forwards []Forward

	// MetricsListen serves Prometheus /metrics, /healthz and /readyz.
	// Default "off". They carry tenant names: keep it off public networks.
	MetricsListen string

	// AdminListen serves the admin API (and the dashboard) over HTTPS,
	// for authenticated operators only (see adminapi.go). Default "off".
	AdminListen string
	// AdminCertFile and AdminKeyFile are the admin listener's certificate
	// and key (PEM); both or neither. Default: a certificate from the
	// relay CA (tether-relay ca export writes the CA to pin).
	AdminCertFile, AdminKeyFile string
	// AdminSessionTTL bounds browser sessions opened by POST /login
	// (never beyond the operator token's expiry). Default 12h.
	AdminSessionTTL time.Duration
	// AdminSSO lets people sign in to the console with OpenID Connect:
	// the issuers, and how their claims map to roles and tenants
	// (ParseAdminSSO reads it from YAML). Default: off.
	AdminSSO AdminSSOConfig
	// DownloadListen serves the files of DownloadDir over HTTPS (the
	// relay's certificate) for the install scripts, and the CA at
	// /ca.der. Default "off".
	DownloadListen string
	// DownloadDir holds agent binaries and install scripts (see
	// scripts/release). Required with DownloadListen.
	DownloadDir string

	// DebugListen serves pprof profiles and /debug/tether (live counts and
	// memory) for operators and benchmarks. Default "off". Bind it to
	// loopback: it is unauthenticated.
	DebugListen string

	// TrustDomain names the SPIFFE trust domain when the CA is first
	// created; ignored afterwards. Default "tether.internal".
	TrustDomain string

	// AgentCertLifetime is the validity of agent certificates, issued at
	// enrolment and at each renewal. Agents renew over their control
	// stream, with a fresh key, when about a third of it remains. Default
	// 24h; at least 30s (lifetimes under an hour are for tests: an agent
	// offline longer than its certificate lives must enrol again).
	AgentCertLifetime time.Duration

	// AuditLog is the file that receives one JSON line per audit record
	// (the store keeps the same records). Default <DataDir>/audit.log.
	AuditLog string
	// AuditTrafficRetention is how long the store keeps the audit
	// records of traffic (audit.Traffic: streams, agent connections and
	// handshakes, summed authentication refusals): older ones are
	// deleted, in batches, at start and every 10 minutes, and each run
	// that deleted any writes an audit.prune record saying what. Every
	// other record is kept for good. The audit file is not pruned (see
	// AuditFileMaxSize). Default 0: kept for ever. At least 1h.
	AuditTrafficRetention time.Duration
	// AuditFileMaxSize rotates the audit file once it holds this many
	// bytes (or a batch more): it is renamed beside itself to
	// <AuditLog>.<UTC time> and a new one opened. Default 0: never
	// rotated, as before. At least 1 MiB.
	AuditFileMaxSize int64
	// AuditFileMaxFiles is how many rotated audit files are kept; the
	// oldest beyond it are removed, except those rotated after the
	// newest backup of the data directory (tether-relay backup), which a
	// restore from it replays. Default 0: every rotated file is kept
	// (archiving them is the operator's). Only with AuditFileMaxSize.
	AuditFileMaxFiles int
	// ChangePoll is how often the relay reads the store's change feed for
	// what other processes (admin commands, other relays) changed: a
	// revocation closes the agent's live sessions, and grants, keys,
	// limits, CA roots and rollouts apply, within about this time. Changes
	// made through this relay's admin API apply at once. Default 500ms.
	ChangePoll time.Duration
	// UpdateInterval is how often the relay offers the active rollout's
	// release again to the agents it selects that have not taken it (a
	// rollout is offered at once when it starts and to each agent when it
	// connects). Default 5s.
	UpdateInterval time.Duration
	// TokenRetention is how long a join token that can enrol no more
	// agents stays in the store: one that expired, or whose every use was
	// taken, longer ago than this (a used-up token is dated by its
	// creation: it does not record its last use) is deleted at the
	// relay's start and housekeeping (every 10 minutes), with a
	// token.purge audit record. Default 720h (30 days); negative: never.
	TokenRetention time.Duration
	// HeartbeatInterval is how often each side pings on the control stream;
	// a session silent for three intervals is closed. Default 10s.
	HeartbeatInterval time.Duration
	// StreamOpenTimeout bounds opening a stream to an agent and waiting for
	// its reply (which includes the agent's dial to the service). Default 15s.
	StreamOpenTimeout time.Duration
	// IdleTimeout closes a tunnelled connection on which no byte moved in
	// either direction for this long. Default 1h.
	IdleTimeout time.Duration
	// HandshakeTimeout bounds TLS, the control-stream hello and front-door
	// handshakes. Default 10s.
	HandshakeTimeout time.Duration
	// MaxHandshakes bounds the agent handshakes (TLS and hello, and
	// enrolments) in progress at once; a connection that waits 8 s for a
	// slot is closed and its agent retries later. Default 512.
	MaxHandshakes int
	// MaxQUICTLSHandshakes bounds the QUIC TLS handshakes in progress
	// (see quicConnContext); more are refused at their first packet.
	// Default 8 × MaxHandshakes.
	MaxQUICTLSHandshakes int
	// MaxHandshakesPerAddress and MaxHandshakesPerNetwork bound the agent
	// handshakes and enrolments (over TCP and QUIC together) in progress
	// from one source address, and from one source network (a /24 for
	// IPv4, a /56 for IPv6), so that a flood from one place cannot hold
	// the slots of MaxHandshakes that agents elsewhere need. A connection
	// beyond either bound is closed at once, over QUIC refused at its first
	// packet. While more than half of MaxHandshakes is taken, a network may
	// have at most a sixteenth of it in progress (at least 1), or
	// MaxHandshakesPerNetwork if lower, so that a few networks cannot hold
	// every slot. Defaults 32 and 128.
	MaxHandshakesPerAddress, MaxHandshakesPerNetwork int
	// MaxFrontPendingPerAddress and MaxFrontPendingPerNetwork bound the
	// front-door connections (SOCKS5, CONNECT, CONNECT over TLS) that have
	// not yet authenticated, and the relay-side forward connections whose
	// stream is not open yet, from one source address and one source
	// network; a connection beyond either is closed at once. Defaults 256
	// and 1024.
	MaxFrontPendingPerAddress, MaxFrontPendingPerNetwork int
	// MaxStreamMemory caps, in bytes, what the tunnels open through the
	// front doors, and the streams other relays of the cluster forward
	// to this relay's agents, may make the relay hold (one budget for
	// both, streammem.Budget): each is charged its worst case while it
	// is open, and a stream that would pass the cap is refused with
	// unavailable. A front door's stream holds a full receive window and
	// two copy buffers (2.5 MiB over TCP/yamux, 6.5 MiB over QUIC); a
	// forwarded stream two receive windows, the link's and its agent
	// stream's, and two copy buffers (4.5 MiB to an agent over TCP, 8.5
	// MiB over QUIC). Past three quarters of the cap, a tenant may hold
	// at most a quarter of it, its streams of both kinds together, so
	// that one tenant cannot take the others' streams. The cap is what
	// backends that never read, or agents that send and never read, can
	// make the relay hold at most. Default: half the memory of the
	// machine, or of the relay's cgroup when that is lower (4 GiB where
	// neither can be read).
	MaxStreamMemory int64
	// ReconnectGrace is how long after start a stream open for a tenant
	// whose agent was connected before the restart waits for that agent to
	// come back (bounded by StreamOpenTimeout) instead of failing with
	// no_agent. Default 30s.
	ReconnectGrace time.Duration
	// DrainTimeout is how long Run waits, after its context is cancelled,
	// for tunnelled connections to finish before closing them. Default 10s.
	DrainTimeout time.Duration

	// Logger receives the relay's logs; nil discards them.
	Logger *slog.Logger
	// Version is reported to agents in the Welcome message.
	Version string

	// Now is the clock; nil means time.Now. For tests.
	Now func() time.Time
}

// DefaultAgentListen is Config.AgentListen's default.
const DefaultAgentListen = ":7443"

// MinAuditFileMaxSize is the least Config.AuditFileMaxSize may be.
const MinAuditFileMaxSize = 1 << 20

// DefaultTokenRetention is Config.TokenRetention's default: 30 days.
const DefaultTokenRetention = 30 * 24 * time.Hour

// DefaultStoreOutageGrace is Config.StoreOutageGrace's default.
const DefaultStoreOutageGrace = 5 * time.Minute

// Forward is a relay-side forward (Config.Forwards).
type Forward = frontdoor.Forward

// ParseForward parses LISTEN=SERVICE.TENANT@BACKEND, such as
// "10.1.0.5:15432=db.acme@billing".
func ParseForward(s string) (Forward, error) { return frontdoor.ParseForward(s) }

// OIDCConfig configures bearer tokens at the CONNECT front doors.
type OIDCConfig = frontdoor.OIDCConfig

// AdminSSOConfig configures single sign-on to the console.
type AdminSSOConfig = console.SSOConfig

// ParseAdminSSO reads AdminSSO from YAML; unknown keys are an error.
func ParseAdminSSO(data []byte) (AdminSSOConfig, error) { return console.ParseSSOConfig(data) }

func (c *Config) setDefaults() {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	defd := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.AgentListen, DefaultAgentListen)
	def(&c.SOCKSListen, "127.0.0.1:1080")
	def(&c.ConnectListen, "127.0.0.1:3128")
	def(&c.DebugListen, Off)
	def(&c.PeerListen, Off)
	defd(&c.ClusterHeartbeat, 2*time.Second)
	defd(&c.ClusterDeadAfter, 10*time.Second)
	defd(&c.StaleAfter, 15*time.Second)
	defd(&c.StoreOutageGrace, DefaultStoreOutageGrace)
	def(&c.ConnectTLSListen, Off)
	def(&c.MetricsListen, Off)
	def(&c.AdminListen, Off)
	defd(&c.AdminSessionTTL, 12*time.Hour)
	def(&c.DownloadListen, Off)
	c.OIDC.SetDefaults()
	def(&c.TrustDomain, "tether.internal")
	def(&c.Version, "dev")
	defd(&c.AgentCertLifetime, 24*time.Hour)
	defd(&c.ChangePoll, 500*time.Millisecond)
	defd(&c.UpdateInterval, 5*time.Second)
	defd(&c.TokenRetention, DefaultTokenRetention)
	if c.AuditLog == "" && c.DataDir != "" {
		c.AuditLog = filepath.Join(c.DataDir, datadir.AuditFile)
	}
	defd(&c.HeartbeatInterval, 10*time.Second)
	defd(&c.StreamOpenTimeout, 15*time.Second)
	defd(&c.IdleTimeout, time.Hour)
	defd(&c.HandshakeTimeout, 10*time.Second)
	defd(&c.DrainTimeout, 10*time.Second)
	defd(&c.ReconnectGrace, 30*time.Second)
	if c.MaxHandshakes == 0 {
		c.MaxHandshakes = 512
	}
	if c.MaxQUICTLSHandshakes == 0 {
		c.MaxQUICTLSHandshakes = session.QUICTLSSlots * c.MaxHandshakes
	}
	defi := func(n *int, v int) {
		if *n == 0 {
			*n = v
		}
	}
	defi(&c.MaxHandshakesPerAddress, 32)
	defi(&c.MaxHandshakesPerNetwork, 128)
	defi(&c.MaxFrontPendingPerAddress, 256)
	defi(&c.MaxFrontPendingPerNetwork, 1024)
	if c.MaxStreamMemory == 0 {
		c.MaxStreamMemory = DefaultStreamMemory()
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// ConfigProblem is one problem with a Config: what is wrong and the
// fields it involves, so that a caller can name where each came from.
type ConfigProblem struct {
	Fields []string // Config's field names, such as "AgentCertLifetime"
	Err    error
}

func (p ConfigProblem) Error() string { return p.Err.Error() }
func (p ConfigProblem) Unwrap() error { return p.Err }

// Check reports every problem New would refuse c for, with c's defaults
// applied (c itself is not changed).
func (c Config) Check() []ConfigProblem {
	c.setDefaults()
	return c.check()
}

// validate reports every problem at once.
func (c *Config) validate() error {
	var errs []error
	for _, p := range c.check() {
		errs = append(errs, p)
	}
	return errors.Join(errs...)
}

// check is every problem of a Config whose defaults are set.
func (c *Config) check() []ConfigProblem {
	var probs []ConfigProblem
	add := func(err error, fields ...string) {
		probs = append(probs, ConfigProblem{Fields: fields, Err: err})
	}
	if c.DataDir == "" {
		add(errors.New("data directory is required"), "DataDir")
	}
	if c.DisableQUIC && c.DisableTCP {
		add(errors.New("both agent transports are disabled"), "DisableQUIC", "DisableTCP")
	}
	for _, l := range []struct{ name, field, addr string }{
		{"agent listen", "AgentListen", c.AgentListen}, {"SOCKS listen", "SOCKSListen", c.SOCKSListen},
		{"CONNECT listen", "ConnectListen", c.ConnectListen}, {"CONNECT TLS listen", "ConnectTLSListen", c.ConnectTLSListen},
		{"metrics listen", "MetricsListen", c.MetricsListen}, {"debug listen", "DebugListen", c.DebugListen},
		{"admin listen", "AdminListen", c.AdminListen}, {"download listen", "DownloadListen", c.DownloadListen},
		{"peer listen", "PeerListen", c.PeerListen},
	} {
		if l.addr == Off && l.name != "agent listen" {
			continue
		}
		if _, _, err := net.SplitHostPort(l.addr); err != nil {
			add(fmt.Errorf("%s address %q: %w", l.name, l.addr, err), l.field)
		}
	}
	if c.DebugListen != Off && c.DebugListen != "" && !frontdoor.IsLoopback(c.DebugListen) {
		// Profiles, goroutine stacks and /debug/tether's counts of every
		// tenant, unauthenticated.
		add(fmt.Errorf("debug listen address %q is not a loopback address (127.0.0.1, ::1 or localhost): it serves profiles and live counts without authentication; reach it from another machine through an SSH tunnel", c.DebugListen), "DebugListen")
	}
	for _, a := range []struct{ name, field, addr string }{
		{"advertise", "Advertise", c.Advertise}, {"advertise peer", "AdvertisePeer", c.AdvertisePeer},
	} {
		if a.addr == "" {
			continue
		}
		if err := checkAdvertised(a.addr); err != nil {
			add(fmt.Errorf("%s address %q: %w", a.name, a.addr, err), a.field)
		}
	}
	if c.AdvertisePeer != "" && c.PeerListen == Off {
		add(errors.New("an advertised peer address without a peer listener"), "AdvertisePeer", "PeerListen")
	}
	if c.PeerListen != Off && c.AdvertisePeer == "" {
		if host, _, err := net.SplitHostPort(c.PeerListen); err == nil && unspecifiedHost(host) {
			add(fmt.Errorf("peer listen address %q binds every address: give the address peers reach it at (advertise peer)", c.PeerListen), "PeerListen", "AdvertisePeer")
		}
	}
	if c.ClusterDeadAfter > 0 && c.ClusterHeartbeat >= c.ClusterDeadAfter/2 {
		add(fmt.Errorf("cluster heartbeat %v must be well under the time after which a relay counts as dead (%v)", c.ClusterHeartbeat, c.ClusterDeadAfter), "ClusterHeartbeat", "ClusterDeadAfter")
	}
	if err := c.OIDC.Validate(); err != nil {
		add(err, "OIDC")
	}
	for _, f := range c.Forwards {
		if err := f.Check(); err != nil {
			add(err, "Forwards")
		}
	}
	if err := c.AdminSSO.Validate(); err != nil {
		add(err, "AdminSSO")
	} else if len(c.AdminSSO.Issuers) > 0 && c.AdminListen == Off {
		add(errors.New("single sign-on to the console needs the admin listener"), "AdminSSO", "AdminListen")
	}
	if (c.AdminCertFile == "") != (c.AdminKeyFile == "") {
		add(errors.New("admin certificate and key files go together: give both or neither"), "AdminCertFile", "AdminKeyFile")
	}
	if c.MaxStreamMemory < 0 || (c.MaxStreamMemory > 0 && c.MaxStreamMemory < StreamMemoryWorstCase) {
		add(fmt.Errorf("max stream memory %d bytes: want at least one stream's worst case, %d bytes", c.MaxStreamMemory, StreamMemoryWorstCase), "MaxStreamMemory")
	}
	if c.MaxHandshakes < 0 {
		add(fmt.Errorf("max handshakes must be positive (got %d)", c.MaxHandshakes), "MaxHandshakes")
	}
	if c.MaxQUICTLSHandshakes < 0 {
		add(fmt.Errorf("max QUIC handshakes must be positive (got %d)", c.MaxQUICTLSHandshakes), "MaxQUICTLSHandshakes")
	}
	for _, b := range []struct {
		name, field string
		n           int
	}{
		{"max handshakes per address", "MaxHandshakesPerAddress", c.MaxHandshakesPerAddress},
		{"max handshakes per network", "MaxHandshakesPerNetwork", c.MaxHandshakesPerNetwork},
		{"max front-door pending per address", "MaxFrontPendingPerAddress", c.MaxFrontPendingPerAddress},
		{"max front-door pending per network", "MaxFrontPendingPerNetwork", c.MaxFrontPendingPerNetwork},
	} {
		if b.n < 0 {
			add(fmt.Errorf("%s must be positive (got %d)", b.name, b.n), b.field)
		}
	}
	for _, d := range []struct {
		name, field string
		d           time.Duration
	}{
		{"agent certificate lifetime", "AgentCertLifetime", c.AgentCertLifetime},
		{"heartbeat interval", "HeartbeatInterval", c.HeartbeatInterval},
		{"stream open timeout", "StreamOpenTimeout", c.StreamOpenTimeout},
		{"idle timeout", "IdleTimeout", c.IdleTimeout},
		{"handshake timeout", "HandshakeTimeout", c.HandshakeTimeout},
		{"drain timeout", "DrainTimeout", c.DrainTimeout},
		{"reconnect grace", "ReconnectGrace", c.ReconnectGrace},
		{"change poll", "ChangePoll", c.ChangePoll},
		{"admin session lifetime", "AdminSessionTTL", c.AdminSessionTTL},
		{"cluster heartbeat", "ClusterHeartbeat", c.ClusterHeartbeat},
		{"cluster dead after", "ClusterDeadAfter", c.ClusterDeadAfter},
		{"stale after", "StaleAfter", c.StaleAfter},
	} {
		if d.d < 0 {
			add(fmt.Errorf("%s must not be negative (got %v)", d.name, d.d), d.field)
		}
	}
	if c.AuditTrafficRetention < 0 || (c.AuditTrafficRetention > 0 && c.AuditTrafficRetention < time.Hour) {
		add(fmt.Errorf("audit traffic retention %v: want 0 (keep for ever) or at least 1h", c.AuditTrafficRetention), "AuditTrafficRetention")
	}
	if c.AuditFileMaxSize < 0 || (c.AuditFileMaxSize > 0 && c.AuditFileMaxSize < MinAuditFileMaxSize) {
		add(fmt.Errorf("audit file max size %d bytes: want 0 (never rotate) or at least %d (1 MiB)", c.AuditFileMaxSize, MinAuditFileMaxSize), "AuditFileMaxSize")
	}
	if c.AuditFileMaxFiles < 0 {
		add(fmt.Errorf("audit file max files must not be negative (got %d)", c.AuditFileMaxFiles), "AuditFileMaxFiles")
	} else if c.AuditFileMaxFiles > 0 && c.AuditFileMaxSize == 0 {
		add(errors.New("audit file max files without a max size: the audit file is never rotated"), "AuditFileMaxFiles", "AuditFileMaxSize")
	}
	if c.AgentCertLifetime > 0 && c.AgentCertLifetime < 30*time.Second {
		add(fmt.Errorf("agent certificate lifetime %v is shorter than 30s", c.AgentCertLifetime), "AgentCertLifetime")
	}
	return probs
}

// checkAdvertised checks an address given to others: host:port with a
// host that names one machine and a port that is not 0.
func checkAdvertised(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if unspecifiedHost(host) {
		return errors.New("name a host others can reach, not every address")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q: want 1 to 65535", port)
	}
	return nil
}

// unspecifiedHost reports a listen host that binds every address.
func unspecifiedHost(host string) bool {
	if host == "" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsUnspecified()
}

// StreamMemoryWorstCase is the most one stream is charged against
// MaxStreamMemory, and the least MaxStreamMemory may be: a stream another
// relay forwards to an agent here over QUIC (streammem.MaxForwarded, 8.5
// MiB; through a front door a stream is charged at most streammem.Max,
// 6.5 MiB). It used to be the front doors' 6.5 MiB, and a cap between the
// two refused every forwarded stream while it let the front doors' through.
const StreamMemoryWorstCase = max(streammem.Max, streammem.MaxForwarded)

// DefaultStreamMemory is MaxStreamMemory's default: half the memory of
// the machine, or of the process's cgroup (v2) when that is lower; 4 GiB
// where neither can be read.
func DefaultStreamMemory() int64 {
	var total int64
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemTotal:" {
				if kb, err := strconv.ParseInt(f[1], 10, 64); err == nil {
					total = kb << 10
				}
			}
		}
	}
	if b, err := os.ReadFile("/sys/fs/cgroup/memory.max"); err == nil {
		if v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil && v > 0 && (total == 0 || v < total) {
			total = v
		}
	}
	if total == 0 {
		return 4 << 30
	}
	return total / 2
}
