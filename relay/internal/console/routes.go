package console

import (
	"net/http"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/relay/admin"
)

// apiRoutes is the admin API: every route with the access it needs
// (access.go). Every one is authenticated; errors are JSON (see APIError).
func (s *Server) apiRoutes() []apiRoute {
	const get, post, put, patch, del = http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete
	return []apiRoute{
		{get, "/api/v1/whoami", anyOperator, s.whoami},
		{get, "/api/v1/fleet", viewer, s.fleet},
		{get, "/api/v1/tenants", viewer, s.tenants},
		{post, "/api/v1/tenants", vendorOnly, s.addTenant},
		{get, "/api/v1/tenants/{name}", viewer, s.tenant},
		{get, "/api/v1/tenants/{name}/limits", viewer, s.tenantLimits},
		{put, "/api/v1/tenants/{name}/limits", tenantAdmin, s.setLimits},
		{patch, "/api/v1/tenants/{name}/limits", tenantAdmin, s.patchLimits},
		{get, "/api/v1/agents", viewer, s.agents},
		{get, "/api/v1/agents/{id}", viewer, s.agent},
		{post, "/api/v1/agents/{id}/revoke", tenantAdmin, s.revoke},
		{post, "/api/v1/agents/{id}/drain", tenantAdmin, s.drain},
		{get, "/api/v1/tokens", tenantAdmin, s.tokens},
		{post, "/api/v1/tokens", tenantAdmin, s.createToken},
		{del, "/api/v1/tokens/{id}", tenantAdmin, s.revokeToken},
		{get, "/api/v1/backends", vendorOnly, s.backends},
		{post, "/api/v1/backends", vendorOnly, s.addBackend},
		{get, "/api/v1/backends/{name}", vendorOnly, s.backend},
		{del, "/api/v1/backends/{name}", vendorOnly, s.removeBackend},
		{post, "/api/v1/backends/{name}/grant", vendorOnly, s.grant},
		{post, "/api/v1/backends/{name}/ungrant", vendorOnly, s.ungrant},
		{get, "/api/v1/backends/{name}/certificates", vendorOnly, s.backendCerts},
		{del, "/api/v1/backends/{name}/certificates/unrecorded", vendorOnly, s.revokeUnrecordedBackendCerts},
		{del, "/api/v1/backends/{name}/certificates/{serial}", vendorOnly, s.revokeBackendCert},
		{get, "/api/v1/audit", viewer, s.audit},
		{get, "/api/v1/releases", vendorOnly, s.releases},
		{del, "/api/v1/releases/{version}", vendorOnly, s.removeRelease},
		{get, "/api/v1/rollouts", vendorOnly, s.rollouts},
		{post, "/api/v1/rollouts", vendorOnly, s.startRollout},
		{get, "/api/v1/operator-certificates", vendorOnly, s.operatorCerts},
		{post, "/api/v1/operator-certificates/{serial}/revoke", vendorOnly, s.revokeOperatorCert},
		{get, "/api/v1/relays", vendorOnly, s.relays},
		{del, "/api/v1/relays/{id}", vendorOnly, s.removeRelay},
	}
}

// routes registers the admin API on mux, and a 404 for other /api/ paths.
func (s *Server) routes(mux *http.ServeMux) {
	mux.Handle("/api/", s.authenticated(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		writeError(w, apiErrorf(http.StatusNotFound, CodeNotFound, "no API endpoint %s", req.URL.Path))
	})))
	s.registerAPI(mux, s.apiRoutes())
}

// reply writes v with status, or returns err.
func reply(w http.ResponseWriter, status int, v any, err error) error {
	if err != nil {
		return err
	}
	writeJSON(w, status, v)
	return nil
}

// whoAmI is the answer of GET whoami.
type whoAmI struct {
	Name string `json:"name"`
	// Via is how the operator authenticated: certificate, token, session
	// (a browser session opened with a token or a certificate) or sso.
	Via    string     `json:"via"`
	Tenant string     `json:"tenant,omitempty"`
	Role   admin.Role `json:"role"`
	// Subject is the person's issuer and subject, for single sign-on.
	Subject string `json:"subject,omitempty"`
}

func (s *Server) whoami(w http.ResponseWriter, req *http.Request, _ *admin.Admin) error {
	op, _ := OperatorFrom(req.Context())
	writeJSON(w, http.StatusOK, whoAmI{Name: op.Name, Via: op.Via, Tenant: op.Tenant, Role: op.Role, Subject: op.Subject})
	return nil
}

func (s *Server) fleet(w http.ResponseWriter, req *http.Request, a *admin.Admin) error {
	f, apiErr := fleetFilter(req)
	if apiErr != nil {
		return apiErr
	}
	fl, err := a.Fleet(req.Context(), f)
	return reply(w, http.StatusOK, fl, err)
}

// fleetFilter reads ?tenant=&state=&unhealthy= .
func fleetFilter(req *http.Request) (admin.FleetFilter, *APIError) {
	q := req.URL.Query()
	f := admin.FleetFilter{Tenant: q.Get("tenant")}
	if s := q.Get("state"); s != "" {
		h, err := admin.ParseHealth(s)
		if err != nil {
			return f, errorFrom(err)
		}
		f.State = h
	}
	switch q.Get("unhealthy") {
	case "", "0", "false":
	case "1", "true":
		f.Unhealthy = true
	default:
		return f, apiErrorf(http.StatusBadRequest, CodeBadRequest, "unhealthy=%q: want true or false", q.Get("unhealthy"))
	}
	return f, nil
}

func (s *Server) tenants(w http.ResponseWriter, req *http.Request, a *admin.Admin) error {
	fl, err := a.Fleet(req.Context(), admin.FleetFilter{})
	return reply(w, http.StatusOK, map[string]any{"tenants": fl.Tenants}, err)
}

func (s *Server) addTenant(w http.ResponseWriter, req *http.Request, a *admin.Admin) error {
	var body struct {
		Name string `json:"name"`
	}
	if e := decodeJSON(req, &body); e != nil {
		return e
	}
	if err := a.AddTenant(req.Context(), body.Name); err != nil {
		return err
	}
	return s.tenantStatus(w, req, a, body.Name, http.StatusCreated)
}

func (s *Server) tenant(w http.ResponseWriter, req *http.Request, a *admin.Admin) error {
	return s.tenantStatus(w, req, a, req.PathValue("name"), http.StatusOK)
}

func (s *Server) tenantStatus(w http.ResponseWriter, req *http.Request, a *admin.Admin, name string, status int) error {
	if _, err := a.Tenant(req.Context(), name); err != nil {
		return err
	}
	fl, err := a.Fleet(req.Context(), admin.FleetFilter{Tenant: name})
	if err == nil && len(fl.Tenants) != 1 {
		err = admin.Errorf(admin.ErrNotFound, "no tenant %q", name)
	}
	if err != nil {
		return err
	}
	writeJSON(w, status, fl.Tenants[0])
	return nil
}

func (s *Server) tenantLimits(w http.ResponseWriter, req *http.Request, a *admin.Admin) error {
	l, err := a.Limits(req.Context(), req.PathValue("name"))
	return reply(w, http.StatusOK, l, err)
}

func (s *Server) setLimits(w http.ResponseWriter, req *http.Request, a *admin.Admin) error {
	var l admin.Limits
	if e := decodeJSON(req, &l); e != nil {
		return e
	}
	name := req.PathValue("name")
	if l.Tenant != "" && l.Tenant != name {
		return apiErrorf(http.StatusBadRequest, CodeBadRequest, "body names tenant %q, the path %q", l.Tenant, name)
	}
	l.Tenant = name
	if err := a.SetLimits(req.Context(), l); err != nil {
		return err
	}
	return s.tenantLimits(w, req, a)
}

// patchLimits changes the limits the body names and keeps the others
// (admin.LimitsPatch); PUT replaces them all.
func (s *Server) patchLimits(w http.ResponseWriter, req *http.Request, a *admin.Admin) error {
	var p admin.LimitsPatch
	if e := decodeJSON(req, &p); e != nil {
		return e
	}
	l, err := a.PatchLimits(req.Context(), req.PathValue("name"), p)
	return reply(w, http.StatusOK, l, err)
}

func (s *Server) agents(w http.ResponseWriter, req *http.Request, a *admin.Admin) error {
	f, apiErr := fleetFilter(req)
	if apiErr != nil {
		return apiErr
	}
	fl, err := a.Fleet(req.Context(), f)
	return reply(w, http.StatusOK, map[string]any{"agents": fl.Agents}, err)
}

func (s *Server) agent(w http.ResponseWriter, req *http.Request, a *admin.Admin) error {
	d, err := a.FleetAgent(req.Context(), req.PathValue("id"))
	return reply(w, http.StatusOK, d, err)
}

func (s *Server) revoke(w http.ResponseWriter, req *http.Request, a *admin.Admin) error {
	var body struct {
		Reason string `json:"reason"`
	}
	if e := decodeJSON(req, &body); e != nil {
		return e
	}
	ai, err := a.RevokeAgent(req.Context(), req.PathValue("id"), body.Reason)
	return reply(w, http.StatusOK, ai, err)
}

func (s *Server) drain(w http.ResponseWriter, req *http.Request, a *admin.Admin) error {
	var body struct {
		Message string `json:"message"`
	}
	if e := decodeJSON(req, &body); e != nil {
		return e
	}
	n, err := a.DrainAgent(req.Context(), req.PathValue("id"), body.Message)
	return reply(w, http.StatusOK, map[string]any{"agent": req.PathValue("id"), "sessions": n}, err)
}

func (s *Server) tokens(w http.ResponseWriter, req *http.Request, a *admin.Admin) error {
	ts, err := a.Tokens(req.Context(), req.URL.Query().Get("tenant"))
	if ts == nil {
		ts = []admin.TokenInfo{}
	}
	return reply(w, http.StatusOK, map[string]any{"tokens": ts}, err)
}

func (s *Server) createToken(w http.ResponseWriter, req *http.Request, a *admin.Admin) error {
	var body struct {
		Tenant string `json:"tenant"`
		TTL    string `json:"ttl"` // a Go duration, default 1h
		Uses   int    `json:"uses"`
	}
	if e := decodeJSON(req, &body); e != nil {
		return e
	}
	var ttl time.Duration
	if body.TTL != "" {
		d, err := time.ParseDuration(body.TTL)
		if err != nil {
			return apiErrorf(http.StatusBadRequest, CodeBadRequest, "ttl %q: %v", body.TTL, err)
		}
		ttl = d
	}
	tok, info, err := a.CreateToken(req.Context(), body.Tenant, ttl, body.Uses)
	return reply(w, http.StatusCreated, map[string]any{"token": tok, "info": info}, err)
}

func (s *Server) revokeToken(w http.ResponseWriter, req *http.Request, a *admin.Admin) error {
	info, err := a.RevokeToken(req.Context(), req.PathValue("id"))
	return reply(w, http.StatusOK, info, err)
}

func (s *Server) backends(w http.ResponseWriter, req *http.Request, a *admin.Admin) error {
	bs, err := a.Backends(req.Context())
	if bs == nil {
		bs = []admin.BackendInfo{}
	}
	return reply(w, http.StatusOK, map[string]any{"backends": bs}, err)
}

func (s *Server) backend(w http.ResponseWriter, req *http.Request, a *admin.Admin) error {
	bs, err := a.Backends(req.Context())
	if err != nil {
		return err
	}
	name := req.PathValue("name")
	for _, b := range bs {
		if b.Name == name {
			writeJSON(w, http.StatusOK, b)
			return nil
		}
	}
	return admin.Errorf(admin.ErrNotFound, "no backend %q", name)
}

func (s *Server) addBackend(w http.ResponseWriter, req *http.Request, a *admin.Admin) error {
	var body struct {
		Name   string   `json:"name"`
		Grants []string `json:"grants"`
	}
	if e := decodeJSON(req, &body); e != nil {
		return e
	}
	key, err := a.AddBackend(req.Context(), body.Name, body.Grants)
	return reply(w, http.StatusCreated, map[string]any{"name": body.Name, "api_key": key}, err)
}

func (s *Server) removeBackend(w http.ResponseWriter, req *http.Request, a *admin.Admin) error {
	err := a.RemoveBackend(req.Context(), req.PathValue("name"))
	return reply(w, http.StatusOK, map[string]any{"removed": req.PathValue("name")}, err)
}

func (s *Server) grant(w http.ResponseWriter, req *http.Request, a *admin.Admin) error {
	return s.changeGrants(w, req, a, true)
}

func (s *Server) ungrant(w http.ResponseWriter, req *http.Request, a *admin.Admin) error {
	return s.changeGrants(w, req, a, false)
}

func (s *Server) changeGrants(w http.ResponseWriter, req *http.Request, a *admin.Admin, add bool) error {
	var body struct {
		Grants []string `json:"grants"`
	}
	if e := decodeJSON(req, &body); e != nil {
		return e
	}
	apply := a.Ungrant
	if add {
		apply = a.Grant
	}
	if err := apply(req.Context(), req.PathValue("name"), body.Grants); err != nil {
		return err
	}
	return s.backend(w, req, a)
}

// backendCerts lists the certificates recorded for a backend, and says
// whether it still accepts those issued before the relay recorded them.
func (s *Server) backendCerts(w http.ResponseWriter, req *http.Request, a *admin.Admin) error {
	l, err := a.BackendCertificates(req.Context(), req.PathValue("name"))
	if l.Certificates == nil {
		l.Certificates = []admin.BackendCertInfo{}
	}
	return reply(w, http.StatusOK, l, err)
}

// revokeBackendCert revokes one of a backend's certificates by serial:
// the front doors refuse it within 2 s.
func (s *Server) revokeBackendCert(w http.ResponseWriter, req *http.Request, a *admin.Admin) error {
	c, err := a.RevokeBackendCertificate(req.Context(), req.PathValue("name"), req.PathValue("serial"))
	return reply(w, http.StatusOK, map[string]any{"backend": req.PathValue("name"), "revoked": c}, err)
}

// revokeUnrecordedBackendCerts makes the front doors refuse, within 2 s,
// a backend's certificates issued before the relay recorded them
// ("unrecorded" is no serial: it is not hexadecimal).
func (s *Server) revokeUnrecordedBackendCerts(w http.ResponseWriter, req *http.Request, a *admin.Admin) error {
	changed, err := a.RevokeUnrecordedBackendCertificates(req.Context(), req.PathValue("name"))
	return reply(w, http.StatusOK, map[string]any{"backend": req.PathValue("name"), "accepts_unrecorded": false, "changed": changed}, err)
}

// audit answers a page of audit records, newest first
// (admin.ParseAuditQuery), with next_cursor after a full page. A
// tenant-scoped operator's records carry a cursor each instead of their
// seq (admin.AuditPage).
func (s *Server) audit(w http.ResponseWriter, req *http.Request, a *admin.Admin) error {
	q, err := admin.ParseAuditQuery(req.URL.Query(), s.cfg.Now())
	if err != nil {
		return err
	}
	p, err := a.AuditPage(req.Context(), q)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, p)
	return nil
}

func (s *Server) releases(w http.ResponseWriter, req *http.Request, a *admin.Admin) error {
	rs, err := a.Releases(req.Context())
	if rs == nil {
		rs = []admin.Release{}
	}
	return reply(w, http.StatusOK, map[string]any{"releases": rs}, err)
}

// removeRelease removes every release of a version (?force=true: even
// while agents may still be fetching it; never while a rollout offers
// it).
func (s *Server) removeRelease(w http.ResponseWriter, req *http.Request, a *admin.Admin) error {
	var force bool
	switch f := req.URL.Query().Get("force"); f {
	case "", "0", "false":
	case "1", "true":
		force = true
	default:
		return apiErrorf(http.StatusBadRequest, CodeBadRequest, "force=%q: want true or false", protocol.Clip(f, 32))
	}
	rm, err := a.RemoveRelease(req.Context(), req.PathValue("version"), force)
	if err == nil && rm.Releases == nil {
		rm.Releases = []admin.Release{}
	}
	return reply(w, http.StatusOK, rm, err)
}

// rollouts answers the rollouts, newest first, and a page of the agents'
// update states, newest first, with their counts by state
// (admin.ParseUpdateQuery: ?version=&tenant=&state=&limit=&cursor=).
func (s *Server) rollouts(w http.ResponseWriter, req *http.Request, a *admin.Admin) error {
	q, err := admin.ParseUpdateQuery(req.URL.Query())
	if err != nil {
		return err
	}
	st, err := a.UpdateStatus(req.Context(), q)
	if st.Rollouts == nil {
		st.Rollouts = []admin.Rollout{}
	}
	if st.Agents == nil {
		st.Agents = []admin.AgentUpdate{}
	}
	return reply(w, http.StatusOK, st, err)
}

// startRollout rolls a published version out, superseding the active
// rollout. Publishing stays with tether-relay release publish on the
// relay's host: the signing key never comes near the API.
func (s *Server) startRollout(w http.ResponseWriter, req *http.Request, a *admin.Admin) error {
	var body struct {
		Version string   `json:"version"`
		Percent int      `json:"percent"`
		Tenants []string `json:"tenants"`
		Agents  []string `json:"agents"`
		HaltAt  float64  `json:"halt_at"`
		Batch   int      `json:"batch"`
	}
	if e := decodeJSON(req, &body); e != nil {
		return e
	}
	ro, warns, err := a.StartRollout(req.Context(), admin.Rollout{Version: body.Version, Percent: body.Percent,
		Tenants: body.Tenants, Agents: body.Agents, HaltAt: body.HaltAt, Batch: body.Batch})
	if warns == nil {
		warns = []string{}
	}
	return reply(w, http.StatusCreated, map[string]any{"rollout": ro, "warnings": warns}, err)
}

// operatorCerts lists the operator certificates the relay issued.
func (s *Server) operatorCerts(w http.ResponseWriter, req *http.Request, a *admin.Admin) error {
	cs, err := a.OperatorCertificates(req.Context())
	if cs == nil {
		cs = []admin.OperatorCertInfo{}
	}
	return reply(w, http.StatusOK, map[string]any{"certificates": cs}, err)
}

// revokeOperatorCert revokes an operator certificate by serial: requests
// with it are refused from the next on, and its browser sessions end.
func (s *Server) revokeOperatorCert(w http.ResponseWriter, req *http.Request, a *admin.Admin) error {
	c, err := a.RevokeOperatorCertificate(req.Context(), req.PathValue("serial"))
	return reply(w, http.StatusOK, c, err)
}

// relays lists the relays of the cluster.
func (s *Server) relays(w http.ResponseWriter, req *http.Request, a *admin.Admin) error {
	rs, err := a.Relays(req.Context())
	return reply(w, http.StatusOK, map[string]any{"relays": rs}, err)
}

// removeRelay forgets a relay that is gone for good.
func (s *Server) removeRelay(w http.ResponseWriter, req *http.Request, a *admin.Admin) error {
	if err := a.RemoveRelay(req.Context(), req.PathValue("id")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
