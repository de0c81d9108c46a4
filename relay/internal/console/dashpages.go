package console

import (
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/protocol/identity"
	"github.com/tetherhq/tether/relay/admin"
)

// The dashboard's pages for join tokens, the "add a connector" flow,
// backends, audit search and releases, and the paging of audit records.

// dashListLimit bounds the rows of long lists (agents' update states).
const dashListLimit = 200

// auditPage is a page of audit records, newest first, with links to the
// older records and back to the newest.
type auditPage struct {
	Records []admin.AuditEntry
	// Older is the link to the next page of older records, "" on the
	// last page; Newest the link back to the first, "" on it.
	Older, Newest string
}

// pageLink is req's path and query with key set to value ("" removes
// it), without live.
func pageLink(req *http.Request, key, value string) string {
	q := req.URL.Query()
	q.Del("live")
	if value == "" {
		q.Del(key)
	} else {
		q.Set(key, value)
	}
	if len(q) == 0 {
		return req.URL.Path
	}
	return req.URL.Path + "?" + q.Encode()
}

// auditPageOf reads the page q asks for (admin.AuditPage: a
// tenant-scoped operator's cursors are sealed, a vendor's are seqs) and
// links it to the next with the query parameter key.
func auditPageOf(req *http.Request, a *admin.Admin, q admin.AuditQuery, key string) (auditPage, error) {
	res, err := a.AuditPage(req.Context(), q)
	if err != nil {
		return auditPage{}, err
	}
	p := auditPage{Records: res.Records}
	if res.NextCursor != "" {
		p.Older = pageLink(req, key, res.NextCursor)
	}
	if q.Cursor != "" {
		p.Newest = pageLink(req, key, "")
	}
	return p, nil
}

// pagedAudit reads a page of f's records for an agent's, tenant's or
// backend's page: dashAuditLimit of them before ?audit_before= (a
// cursor of the page before).
func (s *Server) pagedAudit(req *http.Request, a *admin.Admin, f admin.AuditFilter) (auditPage, error) {
	f.NewestFirst, f.Limit = true, dashAuditLimit
	return auditPageOf(req, a, admin.AuditQuery{AuditFilter: f, Cursor: req.URL.Query().Get("audit_before")}, "audit_before")
}

// auditView is the audit search page.
type auditView struct {
	// The filters as given, for the form.
	Tenant, Agent, Backend, Kind, Since, Until, Limit string
	Tenants                                           []admin.Tenant
	Page                                              auditPage
}

func (s *Server) auditData(req *http.Request, _ Operator, a *admin.Admin, now time.Time) (string, any, error) {
	q := req.URL.Query()
	aq, err := admin.ParseAuditQuery(q, now)
	if err != nil {
		return "", nil, err
	}
	v := auditView{Tenant: aq.Tenant, Agent: aq.Agent, Backend: aq.Backend, Kind: aq.Kind, Since: q.Get("since"), Until: q.Get("until"), Limit: q.Get("limit")}
	if v.Page, err = auditPageOf(req, a, aq, "cursor"); err != nil {
		return "", nil, err
	}
	if v.Tenants, err = a.Tenants(req.Context()); err != nil {
		return "", nil, err
	}
	return "Audit", v, nil
}

// tokensView is the join tokens page.
type tokensView struct {
	Tenant  string // the filter, "" for all the operator sees
	Tenants []admin.Tenant
	Tokens  []admin.TokenInfo
}

func (s *Server) tokensData(req *http.Request, _ Operator, a *admin.Admin, _ time.Time) (string, any, error) {
	v := tokensView{Tenant: req.URL.Query().Get("tenant")}
	if len(v.Tenant) > dashMaxQuery {
		return "", nil, admin.Errorf(admin.ErrInvalid, "filter longer than %d bytes", dashMaxQuery)
	}
	var err error
	if v.Tokens, err = a.Tokens(req.Context(), v.Tenant); err != nil {
		return "", nil, err
	}
	if v.Tenants, err = a.Tenants(req.Context()); err != nil {
		return "", nil, err
	}
	slices.SortStableFunc(v.Tokens, func(x, y admin.TokenInfo) int { return y.CreatedAt.Compare(x.CreatedAt) })
	return "Join tokens", v, nil
}

// tokenState says whether a join token may still enrol an agent.
func tokenState(now time.Time, t admin.TokenInfo) string {
	switch {
	case !now.Before(t.ExpiresAt):
		return "expired"
	case t.Uses >= t.MaxUses:
		return "used up"
	}
	return "active"
}

func (s *Server) revokeTokenAction(req *http.Request, _ Operator, a *admin.Admin) (string, error) {
	if _, err := a.RevokeToken(req.Context(), req.PathValue("id")); err != nil {
		return "", err
	}
	if t := req.PostFormValue("tenant"); t != "" && identity.ValidateName("tenant", t) == nil {
		return "/ui/tokens?tenant=" + url.QueryEscape(t), nil
	}
	return "/ui/tokens", nil
}

// connectView is the "add a connector" form, and what it posts.
type connectView struct {
	Tenant   string
	Tenants  []admin.Tenant
	TTL      string
	Uses     int
	Relay    string // the agent address installers connect to
	Download string // the download listener's URL, "" when it is off
	Services string // NAME=HOST:PORT, one a line
}

// tokenLifetimes are the form's choices of join token lifetime.
var tokenLifetimes = []struct{ Value, Label string }{
	{"1h", "1 hour"}, {"24h", "1 day"}, {"168h", "1 week"}, {"720h", "30 days"},
}

// connectDefaults fills the form from the relay's addresses, with the
// host name the browser reached the console by (when it is a plain one).
func (s *Server) connectDefaults(req *http.Request) connectView {
	v := connectView{TTL: "24h", Uses: 1}
	host := req.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if validHost(host) != nil {
		host = "RELAY-HOST"
	}
	hostPort := func(port string) string { return net.JoinHostPort(host, port) }
	if r := s.cfg.Relay; r != nil {
		c := r.Connector()
		if c.AgentPort != "" {
			v.Relay = hostPort(c.AgentPort)
		}
		if c.DownloadPort != "" {
			v.Download = "https://" + hostPort(c.DownloadPort)
		}
	}
	return v
}

func (s *Server) connectData(req *http.Request, _ Operator, a *admin.Admin, _ time.Time) (string, any, error) {
	v := s.connectDefaults(req)
	var err error
	if v.Tenants, err = a.Tenants(req.Context()); err != nil {
		return "", nil, err
	}
	if t := req.URL.Query().Get("tenant"); t != "" {
		if _, err := a.Tenant(req.Context(), t); err != nil {
			return "", nil, err
		}
		v.Tenant = t
	} else if len(v.Tenants) == 1 {
		v.Tenant = v.Tenants[0].Name
	}
	return "Add a connector", v, nil
}

// connectedView is a new join token with the commands that install an
// agent with it. The token is shown this once.
type connectedView struct {
	Token string
	Info  admin.TokenInfo
	// Linux and Windows are the install commands ("" when the relay
	// serves no install scripts); Enrol is the command for an agent
	// installed by hand or from a package.
	Linux, Windows, Enrol string
	Download              string
}

func (s *Server) connectedData(req *http.Request, _ Operator, a *admin.Admin, _ time.Time) (string, any, error) {
	f, err := parseConnectForm(req)
	if err != nil {
		return "", nil, err
	}
	ttl, _ := time.ParseDuration(f.TTL) // parseConnectForm checked it
	tok, info, err := a.CreateToken(req.Context(), f.Tenant, ttl, f.Uses)
	if err != nil {
		return "", nil, err
	}
	v := connectedView{Token: tok, Info: info, Download: f.Download}
	var conn Connector
	if r := s.cfg.Relay; r != nil {
		conn = r.Connector()
	}
	v.Linux, v.Windows, v.Enrol = installCommands(f, conn)
	return "Connector for " + info.Tenant, v, nil
}

// parseConnectForm reads and checks the "add a connector" form. What it
// accepts goes into shell commands, so it accepts only host names,
// addresses, ports, service names and URL paths of plain characters.
func parseConnectForm(req *http.Request) (connectView, error) {
	f := connectView{Tenant: strings.TrimSpace(req.PostFormValue("tenant")), TTL: req.PostFormValue("ttl"),
		Relay: strings.TrimSpace(req.PostFormValue("relay")), Download: strings.TrimSpace(req.PostFormValue("download")),
		Services: req.PostFormValue("services")}
	bad := func(format string, args ...any) (connectView, error) {
		return connectView{}, admin.Errorf(admin.ErrInvalid, format, args...)
	}
	if err := identity.ValidateName("tenant", f.Tenant); err != nil {
		return bad("%v", err)
	}
	if _, err := time.ParseDuration(f.TTL); err != nil {
		return bad("token lifetime %q: want a duration such as 24h", clipForm(f.TTL))
	}
	f.Uses = 1
	if u := req.PostFormValue("uses"); u != "" {
		n, err := strconv.Atoi(u)
		if err != nil || n < 1 || n > 1000 {
			return bad("uses %q: want a number from 1 to 1000", clipForm(u))
		}
		f.Uses = n
	}
	if err := validHostPort(f.Relay); err != nil {
		return bad("relay address %q: %v", clipForm(f.Relay), err)
	}
	if f.Download != "" {
		if err := validDownload(f.Download); err != nil {
			return bad("download URL %q: %v", clipForm(f.Download), err)
		}
	}
	var services []string
	for line := range strings.Lines(f.Services) {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		name, target, ok := strings.Cut(line, "=")
		if !ok {
			return bad("service %q: want NAME=HOST:PORT", clipForm(line))
		}
		if err := identity.ValidateName("service", name); err != nil {
			return bad("%v", err)
		}
		if err := validHostPort(target); err != nil {
			return bad("service %s: %q: %v", name, clipForm(target), err)
		}
		services = append(services, line)
		if len(services) > 50 {
			return bad("more than 50 services")
		}
	}
	f.Services = strings.Join(services, "\n")
	return f, nil
}

// clipForm shortens a form value for an error message.
func clipForm(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

// validHost accepts a DNS name of letters, digits, dots and hyphens, or
// an IP address.
func validHost(h string) error {
	if h == "" {
		return fmt.Errorf("no host")
	}
	if _, err := netip.ParseAddr(h); err == nil {
		return nil
	}
	if len(h) > 253 {
		return fmt.Errorf("host name longer than 253 characters")
	}
	for _, c := range h {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-') {
			return fmt.Errorf("host names are letters, digits, dots and hyphens")
		}
	}
	return nil
}

// validHostPort accepts HOST:PORT (an IPv6 address in brackets).
func validHostPort(hp string) error {
	h, p, err := net.SplitHostPort(hp)
	if err != nil {
		return fmt.Errorf("want HOST:PORT")
	}
	if err := validHost(h); err != nil {
		return err
	}
	if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q: want 1 to 65535", p)
	}
	return nil
}

// validDownload accepts https://HOST[:PORT][/PATH] of plain characters.
func validDownload(u string) error {
	p, err := url.Parse(u)
	if err != nil || p.Scheme != "https" || p.User != nil || p.RawQuery != "" || p.Fragment != "" || p.Opaque != "" {
		return fmt.Errorf("want https://HOST:PORT")
	}
	if err := validHost(p.Hostname()); err != nil {
		return err
	}
	if port := p.Port(); port != "" {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("port %q: want 1 to 65535", port)
		}
	}
	for _, c := range p.Path {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("/._-", c)) {
			return fmt.Errorf("the path may hold letters, digits and / . _ - only")
		}
	}
	return nil
}

// shellArg quotes s for a POSIX shell or PowerShell when it holds
// anything but plain characters (an IPv6 address's brackets). The
// values are checked before (parseConnectForm) and never hold a quote.
func shellArg(s string) string {
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("/._:=-", c)) {
			return "'" + s + "'"
		}
	}
	return s
}

// installCommands are the one-line install commands for Linux and
// Windows (none when the form names no download listener) and the
// enrolment command for an agent installed otherwise. None holds the
// join token: the install scripts ask for it (or read
// TETHER_JOIN_TOKEN), so it never lands in a shell's history.
func installCommands(f connectView, c Connector) (linux, windows, enrol string) {
	var svc, psSvc []string
	for line := range strings.Lines(f.Services) {
		line = strings.TrimSpace(line)
		svc = append(svc, "--service "+shellArg(line))
		psSvc = append(psSvc, shellArg(line))
	}
	enrol = "tether-agent enroll --relay " + shellArg(f.Relay) + " --token-file - --state-dir /var/lib/tether-agent"
	if f.Download == "" {
		return "", "", enrol
	}
	base := strings.TrimSuffix(f.Download, "/")
	var b strings.Builder
	b.WriteString("curl -fsSk " + shellArg(base+"/install.sh") + " -o install.sh")
	if c.InstallSHA256 != "" {
		b.WriteString(" && echo '" + c.InstallSHA256 + "  install.sh' | sha256sum -c -")
	}
	b.WriteString(" && sudo sh install.sh --relay " + shellArg(f.Relay))
	if h, _, err := net.SplitHostPort(f.Relay); err == nil && base != "https://"+net.JoinHostPort(h, "7444") {
		b.WriteString(" --download " + shellArg(base))
	}
	for _, s := range svc {
		b.WriteString(" " + s)
	}
	linux = b.String()
	b.Reset()
	b.WriteString(".\\install.ps1 -Relay " + shellArg(f.Relay))
	if h, _, err := net.SplitHostPort(f.Relay); err == nil && base != "https://"+net.JoinHostPort(h, "7444") {
		b.WriteString(" -Download " + shellArg(base))
	}
	if len(psSvc) > 0 {
		b.WriteString(" -Service " + strings.Join(psSvc, ","))
	}
	windows = b.String()
	return linux, windows, enrol
}

// backendsView lists backends with their grants.
type backendsView struct {
	Backends []admin.BackendInfo
}

func (s *Server) backendsData(req *http.Request, _ Operator, a *admin.Admin, _ time.Time) (string, any, error) {
	bs, err := a.Backends(req.Context())
	if err != nil {
		return "", nil, err
	}
	return "Backends", backendsView{Backends: bs}, nil
}

// backendView is one backend with its client certificates and its
// recent audit records.
type backendView struct {
	Backend admin.BackendInfo
	Certs   admin.BackendCertList
	Audit   auditPage
}

func (s *Server) backendData(req *http.Request, _ Operator, a *admin.Admin, _ time.Time) (string, any, error) {
	bs, err := a.Backends(req.Context())
	if err != nil {
		return "", nil, err
	}
	name := req.PathValue("name")
	i := slices.IndexFunc(bs, func(b admin.BackendInfo) bool { return b.Name == name })
	if i < 0 {
		return "", nil, admin.Errorf(admin.ErrNotFound, "no backend %q", name)
	}
	v := backendView{Backend: bs[i]}
	if v.Certs, err = a.BackendCertificates(req.Context(), name); err != nil {
		return "", nil, err
	}
	if v.Audit, err = s.pagedAudit(req, a, admin.AuditFilter{Backend: name}); err != nil {
		return "", nil, err
	}
	return "Backend " + name, v, nil
}

// revokeBackendCertAction revokes one client certificate of a backend
// (admin.Admin.RevokeBackendCertificate), or, for the serial
// "unrecorded", those issued before the relay recorded them
// (RevokeUnrecordedBackendCertificates), and returns to its page.
func (s *Server) revokeBackendCertAction(req *http.Request, _ Operator, a *admin.Admin) (string, error) {
	name, serial := req.PathValue("name"), req.PathValue("serial")
	var err error
	if serial == "unrecorded" {
		_, err = a.RevokeUnrecordedBackendCertificates(req.Context(), name)
	} else {
		_, err = a.RevokeBackendCertificate(req.Context(), name, serial)
	}
	if err != nil {
		return "", err
	}
	return "/ui/backends/" + url.PathEscape(name), nil
}

// releasesView is the releases, the rollouts and where agents stand: the
// counts by state and the first page of the agents' update states of the
// version, tenant and state in the page's query (?version=&tenant=&state=).
type releasesView struct {
	Releases []admin.Release
	Status   admin.UpdateStatus
	// The filters as given, for the form, and the versions and states
	// to choose from.
	Version, Tenant, State string
	Versions, States       []string
	// Counts are Status.Counts in the order of a rollout; Total is their
	// sum and Selected the agents' states the filters select.
	Counts          []stateCount
	Total, Selected int
	// More, when the first page is not all, is the command that lists the
	// next page.
	More string
}

// stateCount is how many agents' update states are in a state; Class is
// the CSS class of its box.
type stateCount struct {
	State, Class string
	N            int
}

// stateClass is the CSS class of the box counting an update state:
// done, failed, refused; those under way have none.
func stateClass(state string) string {
	switch state {
	case protocol.UpdateSucceeded:
		return "st-up"
	case protocol.UpdateFailed, protocol.UpdateRolledBack:
		return "st-down"
	case protocol.UpdateRefused:
		return "st-revoked"
	}
	return ""
}

func (s *Server) releasesData(req *http.Request, _ Operator, a *admin.Admin, _ time.Time) (string, any, error) {
	q, err := admin.ParseUpdateQuery(req.URL.Query())
	if err != nil {
		return "", nil, err
	}
	// The first page only: the admin API and tetherctl page the rest.
	q.Limit, q.Cursor = dashListLimit, ""
	rs, err := a.Releases(req.Context())
	if err != nil {
		return "", nil, err
	}
	st, err := a.UpdateStatus(req.Context(), q)
	if err != nil {
		return "", nil, err
	}
	v := releasesView{Releases: rs, Status: st, Version: q.Version, Tenant: q.Tenant, State: q.State, States: admin.UpdateStates}
	// The versions published, then any other rolled out or asked for.
	versions := make([]string, 0, len(rs)+len(st.Rollouts)+1)
	for _, r := range rs {
		versions = append(versions, r.Version)
	}
	for _, r := range st.Rollouts {
		versions = append(versions, r.Version)
	}
	for _, version := range append(versions, q.Version) {
		if version != "" && !slices.Contains(v.Versions, version) {
			v.Versions = append(v.Versions, version)
		}
	}
	for _, state := range admin.UpdateStates {
		v.Counts = append(v.Counts, stateCount{state, stateClass(state), st.Counts[state]})
	}
	for _, state := range slices.Sorted(maps.Keys(st.Counts)) {
		if !slices.Contains(admin.UpdateStates, state) {
			v.Counts = append(v.Counts, stateCount{state, "", st.Counts[state]})
		}
	}
	for _, c := range v.Counts {
		v.Total += c.N
	}
	if v.Selected = v.Total; q.State != "" {
		v.Selected = st.Counts[q.State]
	}
	if st.NextCursor != "" {
		args := []string{"tetherctl release status"}
		for _, f := range [][2]string{{"version", q.Version}, {"tenant", q.Tenant}, {"state", q.State}} {
			if f[1] != "" {
				args = append(args, "--"+f[0], f[1])
			}
		}
		v.More = strings.Join(append(args, "--limit", strconv.Itoa(dashListLimit), "--cursor", st.NextCursor), " ")
	}
	return "Releases", v, nil
}

// relaysData is the relays sharing the store, live ones first.
func (s *Server) relaysData(req *http.Request, _ Operator, a *admin.Admin, _ time.Time) (string, any, error) {
	rs, err := a.Relays(req.Context())
	if err != nil {
		return "", nil, err
	}
	return "Relays", rs, nil
}
