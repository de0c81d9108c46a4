package agent

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tetherhq/tether/protocol/identity"
)

// MaxRelayConnections bounds Config.RelayConnections.
const MaxRelayConnections = 16

// Transport modes.
const (
	TransportAuto = "auto" // QUIC first, TLS over TCP when UDP is blocked
	TransportQUIC = "quic"
	TransportTCP  = "tcp"
)

// Config configures an agent. It is usually loaded from a YAML file with
// LoadConfig; every field has a default except StateDir and Services.
type Config struct {
	// Relays are the relay addresses (host:port) to connect to: one DNS
	// name that leads to any relay of a cluster (a load balancer) or the
	// relays' own addresses. Default: the relay the agent enrolled with.
	// Once a relay has sent the cluster's list, the agent dials the
	// relays' own addresses from it, and these only when no listed relay
	// answers.
	Relays []string `yaml:"relays"`
	// StateDir holds the agent's key, certificate and pinned CA (written by
	// enrolment). Required.
	StateDir string `yaml:"state_dir"`
	// Transport is auto (default), quic or tcp.
	Transport string `yaml:"transport"`
	// Proxy is the HTTP proxy through which the agent reaches its relays
	// over TCP: http://[user:password@]host:port, or https:// for TLS to
	// the proxy. ProxyDirect ("direct") uses no proxy. Empty (the default)
	// takes HTTPS_PROXY (or https_proxy) from the environment. QUIC cannot
	// pass an HTTP proxy: auto mode uses TCP for relays behind one, and
	// transport quic with a proxy is an error.
	Proxy string `yaml:"proxy"`
	// NoProxy lists relays reached without the proxy, in the syntax of
	// NO_PROXY (comma-separated host names, domain suffixes, IP addresses,
	// CIDR ranges, optional ports, or "*"). Empty (the default) takes
	// NO_PROXY (or no_proxy) from the environment. Loopback relays never
	// use the proxy.
	NoProxy string `yaml:"no_proxy"`
	// ProxyCAFile is a PEM file of one or more CA certificates that an
	// https:// proxy's certificate may chain to, trusted in addition to
	// the system's roots: for a proxy whose certificate is from a private
	// CA. It verifies the proxy only, never a relay (relays are verified
	// against the relay's CA alone). Empty (the default): the system's
	// roots only. An error with proxy http:// or direct, where it would
	// verify nothing. Read when the agent starts (which fails without a
	// valid file) and again whenever it changes: the next connections to
	// the proxy trust the new file's CAs, and a file that does not load
	// keeps those in use (a warning, and ProxyCAError in the status).
	// Commands that do not connect (status, access-log, install) do not
	// read it.
	ProxyCAFile string `yaml:"proxy_ca_file"`
	// RelayNetworks are where the relays' list may also send the agent:
	// CIDR ranges, IP addresses and DNS domains (with their subdomains).
	// An address of the list that is not in Relays is dialled only when it
	// is public, or on loopback or a private range where a configured
	// relay is too, or within these (relayaddr.go); link-local, multicast
	// and unspecified addresses never are.
	RelayNetworks []string `yaml:"relay_networks"`
	// RelayConnections is how many connections the agent keeps, 1 to 16
	// (0, the default: 2). When the relays send the cluster's list, each goes to
	// a different relay (two to one relay only while the cluster has
	// fewer live relays than connections); otherwise they are spread
	// over Relays round-robin, so with one relay address all go to it.
	RelayConnections int `yaml:"relay_connections"`
	// Connections is the former name of RelayConnections, still
	// accepted with the same meaning; setting both is an error.
	Connections int `yaml:"connections"`
	// Services maps a service name to the address the agent dials for it.
	// Only these can ever be reached through the agent: an empty map
	// reaches nothing, and nothing the relay sends can add to it.
	Services map[string]Service `yaml:"services"`

	// DialTimeout bounds the agent's connection to a service. Default 10s.
	DialTimeout time.Duration `yaml:"dial_timeout"`
	// IdleTimeout closes a tunnelled connection idle in both directions
	// for this long. Default 1h.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// QUICTimeout is how long auto mode waits for a QUIC handshake before
	// falling back to TCP. Default 3s.
	QUICTimeout time.Duration `yaml:"quic_timeout"`
	// QUICRetry is how long auto mode stays on TCP after QUIC failed before
	// it tries QUIC again, plus up to half as much again at random. Default 5m.
	QUICRetry time.Duration `yaml:"quic_retry"`
	// Reconnect is the backoff between connection attempts.
	Reconnect Backoff `yaml:"reconnect"`
	// DrainTimeout is how long a draining session (relay GoAway, or agent
	// shutdown) waits for its streams to finish. Default 10s.
	DrainTimeout time.Duration `yaml:"drain_timeout"`
	// DebugListen serves Go pprof profiles on this loopback address
	// (host:port). Empty (the default) is off.
	DebugListen string `yaml:"debug_listen"`
	// StatusListen serves the agent's status as JSON (GET /status, read by
	// tether-agent status) on this loopback address (host:port). Empty
	// (the default) is off.
	StatusListen string `yaml:"status_listen"`
	// ReportInterval is how often the agent sends its report to each
	// relay (it also reports about a second after its config, certificate
	// or transport change). Default 15s.
	ReportInterval time.Duration `yaml:"report_interval"`
	// Log configures logging (used by the tether-agent command).
	Log LogConfig `yaml:"log"`
	// Update configures self-update (update_config.go).
	Update UpdateConfig `yaml:"update"`
	// AccessLog configures the access log (accesslog.go).
	AccessLog AccessLogConfig `yaml:"access_log"`

	// ConfigFile is the file the config was loaded from; when set, the
	// agent applies changes to its services without a restart.
	ConfigFile string `yaml:"-"`
	// NoFileWatch turns off watching the config, certificate and key files
	// for changes. For programs that run many agents in one process (the
	// fleet benchmark): each watcher is an inotify instance, of which a
	// user has only 128 by default on Linux.
	NoFileWatch bool `yaml:"-"`

	// Logger receives logs; nil discards them.
	Logger *slog.Logger `yaml:"-"`
	// Version is reported to the relay.
	Version string `yaml:"-"`
	// BuiltinUpdateKeys are release keys built into the binary (trusted
	// with Update.PublicKeys).
	BuiltinUpdateKeys []string `yaml:"-"`
	// UpdateTrial, when set, runs the agent as the trial of a new binary:
	// at its first connection it writes its version to this file and stops.
	UpdateTrial string `yaml:"-"`
	// TrialParent, for a trial (UpdateTrial set), is the pid of the agent
	// process that started it, which holds the state directory's lock for
	// it: the trial stops as soon as that process is gone (0: not
	// watched). A trial stops anyway once it has run for its health
	// timeout and as long again (at most 10 s more), by when the agent
	// that started it has given up on it.
	TrialParent int `yaml:"-"`
	// Executable is the agent's binary (default os.Executable()) and Args
	// the arguments it runs with, given again to a trial of a new binary.
	Executable string   `yaml:"-"`
	Args       []string `yaml:"-"`
	// TrialOutput receives a trial's output (default: discarded).
	TrialOutput io.Writer `yaml:"-"`
	// DialService dials services; nil uses a net.Dialer. For tests.
	DialService func(ctx context.Context, network, addr string) (net.Conn, error) `yaml:"-"`
	// LogKeyStep, when not nil, is called after each durable step of a
	// rotation of the access log's key (accesslog.Options.AfterStep).
	// For tests.
	LogKeyStep func(step string) `yaml:"-"`
}

// LogConfig selects the log level and format.
type LogConfig struct {
	Level  string `yaml:"level"`  // debug, info (default), warn, error
	Format string `yaml:"format"` // json, text, or auto (default: text on a terminal)
}

// Service is one entry of the allowlist. In YAML it is either an address
// string ("db: 10.0.0.5:5432") or a mapping:
//
//	db:
//	  address: 10.0.0.5:5432
//	  backends: [billing, reports-*]
type Service struct {
	Address string `yaml:"address"`
	// Backends, when not empty, are the only backends allowed to reach the
	// service: names of backend identities as the relay authenticated them
	// (the relay passes the identity with every stream), each a name or a
	// pattern with "*". The relay's own policy applies first; this list
	// can only narrow it. In the file, an empty list is an error (it would
	// allow every backend, which leaving it out says).
	Backends []string `yaml:"backends"`
}

// allows reports whether the backend identity the relay sent for a stream
// ("backend:<name>") may use the service.
func (s Service) allows(backend string) bool {
	if len(s.Backends) == 0 {
		return true
	}
	name, ok := strings.CutPrefix(backend, backendPrefix)
	if !ok {
		return false
	}
	for _, p := range s.Backends {
		if p == name {
			return true
		}
		if ok, err := path.Match(p, name); err == nil && ok {
			return true
		}
	}
	return false
}

// backendPrefix starts the backend identity in a stream header.
const backendPrefix = "backend:"

// UnmarshalYAML accepts both the scalar and the mapping form. Unknown keys
// in the mapping form are errors (yaml.Node.Decode would not check them).
func (s *Service) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.ScalarNode:
		return n.Decode(&s.Address)
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			switch k.Value {
			case "address":
				if err := v.Decode(&s.Address); err != nil {
					return err
				}
			case "backends":
				if err := v.Decode(&s.Backends); err != nil {
					return err
				}
				// An empty list would allow every backend, as no list
				// does: "backends: []" meant as "none for now", or a
				// file cut off after "backends:" by a write still in
				// progress, must not open the service to all of them.
				if len(s.Backends) == 0 {
					return fmt.Errorf("line %d: backends is empty, which would allow every backend: list the backends allowed, or leave backends out to allow every backend the relay lets through", k.Line)
				}
			default:
				return fmt.Errorf("line %d: field %s not found in service", k.Line, k.Value)
			}
		}
		return nil
	}
	return fmt.Errorf("line %d: a service is an address string or a mapping with address (and optionally backends)", n.Line)
}

// validateBackendPattern accepts a backend name, or one with "*" standing
// for any run of characters ("*" alone would allow every backend, which
// is the same as no list: it is refused as a likely mistake).
func validateBackendPattern(p string) error {
	if p == "*" {
		return errors.New(`"*" allows every backend: leave backends out instead`)
	}
	if strings.Contains(p, "**") {
		return fmt.Errorf("backend pattern %q: use a single *", p)
	}
	return identity.ValidateName("backend", strings.ReplaceAll(p, "*", "x"))
}

// Backoff is exponential backoff with full jitter: the n-th wait is uniform
// in [0, min(Max, Initial·2ⁿ)].
type Backoff struct {
	Initial time.Duration `yaml:"initial"` // default 500ms
	Max     time.Duration `yaml:"max"`     // default 30s
}

// LoadConfig reads and validates a YAML config file. Unknown keys are
// errors, so a misspelt setting is never silently ignored.
func LoadConfig(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	return ParseConfig(data)
}

// ParseConfig decodes and validates YAML config data.
func ParseConfig(data []byte) (Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		if errors.Is(err, io.EOF) {
			return Config{}, errors.New("config is empty")
		}
		return Config{}, fmt.Errorf("parse config: %w", err)
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

func (c *Config) setDefaults() {
	defd := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if c.Transport == "" {
		c.Transport = TransportAuto
	}
	c.RelayConnections = cmp.Or(c.RelayConnections, c.Connections, 2)
	defd(&c.DialTimeout, 10*time.Second)
	defd(&c.IdleTimeout, time.Hour)
	defd(&c.QUICTimeout, 3*time.Second)
	defd(&c.QUICRetry, 5*time.Minute)
	defd(&c.Reconnect.Initial, 500*time.Millisecond)
	defd(&c.Reconnect.Max, 30*time.Second)
	defd(&c.DrainTimeout, 10*time.Second)
	c.Update.setDefaults()
	defd(&c.ReportInterval, 15*time.Second)
	if c.Version == "" {
		c.Version = "dev"
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate reports every problem in c at once.
func (c *Config) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.StateDir == "" {
		add("state_dir is required")
	}
	for i, r := range c.Relays {
		if _, _, err := net.SplitHostPort(r); err != nil {
			add("relays[%d] %q: want host:port", i, r)
		}
	}
	if _, err := parseRelayNetworks(c.RelayNetworks); err != nil {
		errs = append(errs, err)
	}
	switch c.Transport {
	case "", TransportAuto, TransportQUIC, TransportTCP:
	default:
		add("transport %q: want auto, quic or tcp", c.Transport)
	}
	if c.Proxy != "" && c.Proxy != ProxyDirect {
		// Never repeat the value: it may hold a password.
		if _, err := parseProxyURL(c.Proxy); err != nil {
			add("proxy: %v", err)
		} else if c.Transport == TransportQUIC {
			add("proxy: QUIC is unavailable through an HTTP proxy (a proxy carries TCP only): use transport auto or tcp with a proxy, or proxy: direct")
		}
	}
	if c.ProxyCAFile != "" {
		// The file itself is read by the commands that connect (New,
		// Enroll) and by CheckProxyCAFile, not here: a command that only
		// reads the config (status, access-log, install) does not fail
		// for it, and a reloaded config is not refused for it (the file
		// watcher reloads the file on its own).
		if err := checkProxyCASetting(c.Proxy); err != nil {
			errs = append(errs, err)
		}
	}
	if c.RelayConnections < 0 || c.RelayConnections > MaxRelayConnections {
		add("relay_connections %d: want 1 to %d", c.RelayConnections, MaxRelayConnections)
	}
	if c.Connections < 0 || c.Connections > MaxRelayConnections {
		add("connections %d: want 1 to %d", c.Connections, MaxRelayConnections)
	}
	if c.Connections != 0 && c.RelayConnections != 0 {
		add("connections and relay_connections are one setting (connections is its former name): set relay_connections only")
	}
	if c.DebugListen != "" {
		if err := checkLoopback(c.DebugListen); err != nil {
			add("debug_listen %q: %v", c.DebugListen, err)
		}
	}
	if c.StatusListen != "" {
		if err := checkLoopback(c.StatusListen); err != nil {
			add("status_listen %q: %v (the status names the agent's services and relays: it is served on loopback only)", c.StatusListen, err)
		}
	}
	names := make([]string, 0, len(c.Services))
	for n := range c.Services {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if err := identity.ValidateName("service", n); err != nil {
			add("services: %v", err)
		}
		addr := c.Services[n].Address
		if host, port, err := net.SplitHostPort(addr); err != nil || host == "" || port == "" {
			add("services.%s: address %q: want host:port", n, addr)
		} else if p, err := net.LookupPort("tcp", port); err != nil || p == 0 {
			// Else every stream to it would fail, as "unreachable".
			add("services.%s: address %q: port %q: want 1 to 65535, or a service name known to this machine", n, addr, port)
		}
		for i, b := range c.Services[n].Backends {
			if err := validateBackendPattern(b); err != nil {
				add("services.%s.backends[%d]: %v", n, i, err)
			}
		}
	}
	for name, d := range map[string]time.Duration{
		"dial_timeout": c.DialTimeout, "idle_timeout": c.IdleTimeout, "quic_timeout": c.QUICTimeout,
		"quic_retry": c.QUICRetry, "reconnect.initial": c.Reconnect.Initial, "reconnect.max": c.Reconnect.Max,
		"drain_timeout": c.DrainTimeout, "report_interval": c.ReportInterval,
	} {
		if d < 0 {
			add("%s must not be negative (got %v)", name, d)
		}
	}
	if c.Reconnect.Max != 0 && c.Reconnect.Initial > c.Reconnect.Max {
		add("reconnect.initial %v is larger than reconnect.max %v", c.Reconnect.Initial, c.Reconnect.Max)
	}
	if err := c.Update.validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.AccessLog.validate(); err != nil {
		errs = append(errs, err)
	}
	switch c.Log.Level {
	case "", "debug", "info", "warn", "error":
	default:
		add("log.level %q: want debug, info, warn or error", c.Log.Level)
	}
	switch c.Log.Format {
	case "", "auto", "json", "text":
	default:
		add("log.format %q: want auto, json or text", c.Log.Format)
	}
	return errors.Join(errs...)
}

// ReadStateDir reads only state_dir from the YAML config file at path,
// without checking the rest: for uninstall --purge, which must find the
// state directory install gave the service even when the config is no
// longer one this version accepts (a key of another version, a setting
// out of range), since that directory holds the agent's identity. An
// error that wraps fs.ErrNotExist: no file.
func ReadStateDir(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read config: %w", err)
	}
	var c struct {
		StateDir string `yaml:"state_dir"`
	}
	if err := yaml.Unmarshal(data, &c); err != nil {
		return "", fmt.Errorf("parse config: %w", err)
	}
	return c.StateDir, nil
}

// checkProxyCAFile checks proxy_ca_file: a file of certificates
// (readProxyCAs), with a proxy setting that can use it
// (checkProxyCASetting).
func checkProxyCAFile(file, proxy string) error {
	var errs []error
	if _, err := readProxyCAs(file); err != nil {
		errs = append(errs, fmt.Errorf("proxy_ca_file %s: %w", file, err))
	}
	if err := checkProxyCASetting(proxy); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// checkProxyCASetting checks that proxy, the proxy key of a config with
// proxy_ca_file, can use it: an http:// proxy or direct is an error, as
// the file would verify nothing while the operator believes the proxy is
// verified; an empty key (the environment's proxy, unknown here) is not.
func checkProxyCASetting(proxy string) error {
	if proxy == ProxyDirect {
		return errors.New("proxy_ca_file is set with proxy: direct: it verifies an https:// proxy only; remove it, or set the https:// proxy")
	} else if proxy != "" {
		if u, err := parseProxyURL(proxy); err == nil && u.Scheme != "https" {
			return errors.New("proxy_ca_file is set, but the proxy is http://, to which the agent speaks no TLS: it verifies an https:// proxy only; use the proxy's https:// URL (if it accepts TLS), or remove proxy_ca_file")
		}
	}
	return nil
}

// CheckProxyCAFile reads proxy_ca_file, which Validate leaves to the
// commands that connect: nil when it is unset or a valid file of
// certificates, else what is wrong with it (never its contents).
func (c *Config) CheckProxyCAFile() error {
	if c.ProxyCAFile == "" {
		return nil
	}
	if _, err := readProxyCAs(c.ProxyCAFile); err != nil {
		return fmt.Errorf("proxy_ca_file %s: %w", c.ProxyCAFile, err)
	}
	return nil
}

// ProxySettings are the proxy keys of an agent config.
type ProxySettings struct {
	Proxy   string `yaml:"proxy"`
	NoProxy string `yaml:"no_proxy"`
	CAFile  string `yaml:"proxy_ca_file"`
}

// ReadProxy reads only proxy, no_proxy and proxy_ca_file from the YAML
// config file at path, without checking the rest (as ReadStateDir): for
// enroll --config, which reaches the relay the way the agent will run
// with that file. The values are not checked here (Enroll does, without
// repeating them).
func ReadProxy(path string) (ProxySettings, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return ProxySettings{}, fmt.Errorf("read config: %w", err)
	}
	var c ProxySettings
	if err := yaml.Unmarshal(data, &c); err != nil {
		return ProxySettings{}, fmt.Errorf("parse config: %w", err)
	}
	return c, nil
}
