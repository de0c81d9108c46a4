package console

import (
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/tetherhq/tether/relay/admin"
	"github.com/tetherhq/tether/relay/internal/audit"
)

// routes registers the /api/v1/ endpoints on mux. Every one is
// authenticated; errors are JSON (see APIError).
func (s *Server) routes(mux *http.ServeMux) {
	api := func(pattern string, methods map[string]http.HandlerFunc) {
		allowed := make([]string, 0, len(methods))
		for m := range methods {
			allowed = append(allowed, m)
		}
		slices.Sort(allowed)
		mux.Handle(pattern, s.authenticated(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			h := methods[req.Method]
			if h == nil && req.Method == http.MethodHead {
				h = methods[http.MethodGet]
			}
			if h == nil {
				methodNotAllowed(w, allowed...)
				return
			}
			h(w, req)
		})))
	}
	type m = map[string]http.HandlerFunc
	const get, post, put, patch, del = http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete
	mux.Handle("/api/", s.authenticated(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		writeError(w, apiErrorf(http.StatusNotFound, CodeNotFound, "no API endpoint %s", req.URL.Path))
	})))
	api("/api/v1/whoami", m{get: s.whoami})
	api("/api/v1/fleet", m{get: s.fleet})
	api("/api/v1/tenants", m{get: s.tenants, post: s.addTenant})
	api("/api/v1/tenants/{name}", m{get: s.tenant})
	api("/api/v1/tenants/{name}/limits", m{get: s.tenantLimits, put: s.setLimits, patch: s.patchLimits})
	api("/api/v1/agents", m{get: s.agents})
	api("/api/v1/agents/{id}", m{get: s.agent})
	api("/api/v1/agents/{id}/revoke", m{post: s.revoke})
	api("/api/v1/agents/{id}/drain", m{post: s.drain})
	api("/api/v1/tokens", m{get: s.tokens, post: s.createToken})
	api("/api/v1/tokens/{id}", m{del: s.revokeToken})
	api("/api/v1/backends", m{get: s.backends, post: s.addBackend})
	api("/api/v1/backends/{name}", m{get: s.backend, del: s.removeBackend})
	api("/api/v1/backends/{name}/grant", m{post: s.grant})
	api("/api/v1/backends/{name}/ungrant", m{post: s.ungrant})
	api("/api/v1/audit", m{get: s.audit})
	api("/api/v1/releases", m{get: s.releases})
	api("/api/v1/rollouts", m{get: s.rollouts, post: s.startRollout})
}

// actor is how audit records name the request's operator.
func actor(req *http.Request) string {
	op, _ := OperatorFrom(req.Context())
	return op.Actor()
}

// do writes v with status, or err as an API error.
func reply(w http.ResponseWriter, status int, v any, err error) {
	if err != nil {
		writeError(w, errorFrom(err))
		return
	}
	writeJSON(w, status, v)
}

func (s *Server) whoami(w http.ResponseWriter, req *http.Request) {
	op, _ := OperatorFrom(req.Context())
	writeJSON(w, http.StatusOK, op)
}

func (s *Server) fleet(w http.ResponseWriter, req *http.Request) {
	f, apiErr := fleetFilter(req)
	if apiErr != nil {
		writeError(w, apiErr)
		return
	}
	fl, err := s.adm.Fleet(req.Context(), f)
	reply(w, http.StatusOK, fl, err)
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

func (s *Server) tenants(w http.ResponseWriter, req *http.Request) {
	fl, err := s.adm.Fleet(req.Context(), admin.FleetFilter{})
	reply(w, http.StatusOK, map[string]any{"tenants": fl.Tenants}, err)
}

func (s *Server) addTenant(w http.ResponseWriter, req *http.Request) {
	var body struct {
		Name string `json:"name"`
	}
	if e := decodeJSON(req, &body); e != nil {
		writeError(w, e)
		return
	}
	if err := s.adm.As(actor(req)).AddTenant(req.Context(), body.Name); err != nil {
		writeError(w, errorFrom(err))
		return
	}
	s.tenantStatus(w, req, body.Name, http.StatusCreated)
}

func (s *Server) tenant(w http.ResponseWriter, req *http.Request) {
	s.tenantStatus(w, req, req.PathValue("name"), http.StatusOK)
}

func (s *Server) tenantStatus(w http.ResponseWriter, req *http.Request, name string, status int) {
	if _, err := s.adm.Tenant(req.Context(), name); err != nil {
		writeError(w, errorFrom(err))
		return
	}
	fl, err := s.adm.Fleet(req.Context(), admin.FleetFilter{Tenant: name})
	if err == nil && len(fl.Tenants) != 1 {
		err = admin.Errorf(admin.ErrNotFound, "no tenant %q", name)
	}
	if err != nil {
		writeError(w, errorFrom(err))
		return
	}
	writeJSON(w, status, fl.Tenants[0])
}

func (s *Server) tenantLimits(w http.ResponseWriter, req *http.Request) {
	name := req.PathValue("name")
	if _, err := s.adm.Tenant(req.Context(), name); err != nil {
		writeError(w, errorFrom(err))
		return
	}
	all, err := s.adm.AllLimits(req.Context())
	l := admin.Limits{Tenant: name, CIDRs: []string{}}
	if i := slices.IndexFunc(all, func(l admin.Limits) bool { return l.Tenant == name }); i >= 0 {
		l = all[i]
	}
	reply(w, http.StatusOK, l, err)
}

func (s *Server) setLimits(w http.ResponseWriter, req *http.Request) {
	var l admin.Limits
	if e := decodeJSON(req, &l); e != nil {
		writeError(w, e)
		return
	}
	name := req.PathValue("name")
	if l.Tenant != "" && l.Tenant != name {
		writeError(w, apiErrorf(http.StatusBadRequest, CodeBadRequest, "body names tenant %q, the path %q", l.Tenant, name))
		return
	}
	l.Tenant = name
	if err := s.adm.As(actor(req)).SetLimits(req.Context(), l); err != nil {
		writeError(w, errorFrom(err))
		return
	}
	s.tenantLimits(w, req)
}

// patchLimits changes the limits the body names and keeps the others
// (admin.LimitsPatch); PUT replaces them all.
func (s *Server) patchLimits(w http.ResponseWriter, req *http.Request) {
	var p admin.LimitsPatch
	if e := decodeJSON(req, &p); e != nil {
		writeError(w, e)
		return
	}
	l, err := s.adm.As(actor(req)).PatchLimits(req.Context(), req.PathValue("name"), p)
	reply(w, http.StatusOK, l, err)
}

func (s *Server) agents(w http.ResponseWriter, req *http.Request) {
	f, apiErr := fleetFilter(req)
	if apiErr != nil {
		writeError(w, apiErr)
		return
	}
	fl, err := s.adm.Fleet(req.Context(), f)
	reply(w, http.StatusOK, map[string]any{"agents": fl.Agents}, err)
}

func (s *Server) agent(w http.ResponseWriter, req *http.Request) {
	d, err := s.adm.FleetAgent(req.Context(), req.PathValue("id"))
	reply(w, http.StatusOK, d, err)
}

func (s *Server) revoke(w http.ResponseWriter, req *http.Request) {
	var body struct {
		Reason string `json:"reason"`
	}
	if e := decodeJSON(req, &body); e != nil {
		writeError(w, e)
		return
	}
	ai, err := s.adm.As(actor(req)).RevokeAgent(req.Context(), req.PathValue("id"), body.Reason)
	reply(w, http.StatusOK, ai, err)
}

func (s *Server) drain(w http.ResponseWriter, req *http.Request) {
	var body struct {
		Message string `json:"message"`
	}
	if e := decodeJSON(req, &body); e != nil {
		writeError(w, e)
		return
	}
	n, err := s.adm.As(actor(req)).DrainAgent(req.Context(), req.PathValue("id"), body.Message)
	reply(w, http.StatusOK, map[string]any{"agent": req.PathValue("id"), "sessions": n}, err)
}

func (s *Server) tokens(w http.ResponseWriter, req *http.Request) {
	ts, err := s.adm.Tokens(req.Context(), req.URL.Query().Get("tenant"))
	if ts == nil {
		ts = []admin.TokenInfo{}
	}
	reply(w, http.StatusOK, map[string]any{"tokens": ts}, err)
}

func (s *Server) createToken(w http.ResponseWriter, req *http.Request) {
	var body struct {
		Tenant string `json:"tenant"`
		TTL    string `json:"ttl"` // a Go duration, default 1h
		Uses   int    `json:"uses"`
	}
	if e := decodeJSON(req, &body); e != nil {
		writeError(w, e)
		return
	}
	var ttl time.Duration
	if body.TTL != "" {
		d, err := time.ParseDuration(body.TTL)
		if err != nil {
			writeError(w, apiErrorf(http.StatusBadRequest, CodeBadRequest, "ttl %q: %v", body.TTL, err))
			return
		}
		ttl = d
	}
	tok, info, err := s.adm.As(actor(req)).CreateToken(req.Context(), body.Tenant, ttl, body.Uses)
	reply(w, http.StatusCreated, map[string]any{"token": tok, "info": info}, err)
}

func (s *Server) revokeToken(w http.ResponseWriter, req *http.Request) {
	info, err := s.adm.As(actor(req)).RevokeToken(req.Context(), req.PathValue("id"))
	reply(w, http.StatusOK, info, err)
}

func (s *Server) backends(w http.ResponseWriter, req *http.Request) {
	bs, err := s.adm.Backends(req.Context())
	if bs == nil {
		bs = []admin.BackendInfo{}
	}
	reply(w, http.StatusOK, map[string]any{"backends": bs}, err)
}

func (s *Server) backend(w http.ResponseWriter, req *http.Request) {
	bs, err := s.adm.Backends(req.Context())
	if err != nil {
		writeError(w, errorFrom(err))
		return
	}
	name := req.PathValue("name")
	i := slices.IndexFunc(bs, func(b admin.BackendInfo) bool { return b.Name == name })
	if i < 0 {
		writeError(w, errorFrom(admin.Errorf(admin.ErrNotFound, "no backend %q", name)))
		return
	}
	writeJSON(w, http.StatusOK, bs[i])
}

func (s *Server) addBackend(w http.ResponseWriter, req *http.Request) {
	var body struct {
		Name   string   `json:"name"`
		Grants []string `json:"grants"`
	}
	if e := decodeJSON(req, &body); e != nil {
		writeError(w, e)
		return
	}
	key, err := s.adm.As(actor(req)).AddBackend(req.Context(), body.Name, body.Grants)
	reply(w, http.StatusCreated, map[string]any{"name": body.Name, "api_key": key}, err)
}

func (s *Server) removeBackend(w http.ResponseWriter, req *http.Request) {
	err := s.adm.As(actor(req)).RemoveBackend(req.Context(), req.PathValue("name"))
	reply(w, http.StatusOK, map[string]any{"removed": req.PathValue("name")}, err)
}

func (s *Server) grant(w http.ResponseWriter, req *http.Request) { s.changeGrants(w, req, true) }
func (s *Server) ungrant(w http.ResponseWriter, req *http.Request) {
	s.changeGrants(w, req, false)
}

func (s *Server) changeGrants(w http.ResponseWriter, req *http.Request, add bool) {
	var body struct {
		Grants []string `json:"grants"`
	}
	if e := decodeJSON(req, &body); e != nil {
		writeError(w, e)
		return
	}
	a := s.adm.As(actor(req))
	apply := a.Ungrant
	if add {
		apply = a.Grant
	}
	if err := apply(req.Context(), req.PathValue("name"), body.Grants); err != nil {
		writeError(w, errorFrom(err))
		return
	}
	s.backend(w, req)
}

func (s *Server) audit(w http.ResponseWriter, req *http.Request) {
	f, err := admin.ParseAuditQuery(req.URL.Query(), s.cfg.Now())
	if err != nil {
		writeError(w, errorFrom(err))
		return
	}
	recs, err := s.adm.Audit(req.Context(), f)
	if err != nil {
		writeError(w, errorFrom(err))
		return
	}
	out := map[string]any{"records": recs}
	if recs == nil {
		out["records"] = []audit.Record{}
	}
	if len(recs) == f.Limit {
		out["next_cursor"] = strconv.FormatInt(recs[len(recs)-1].Seq, 10)
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) releases(w http.ResponseWriter, req *http.Request) {
	rs, err := s.adm.Releases(req.Context())
	if rs == nil {
		rs = []admin.Release{}
	}
	reply(w, http.StatusOK, map[string]any{"releases": rs}, err)
}

// rollouts answers the rollouts, newest first, and every agent's update
// state, for the version in ?version= or all.
func (s *Server) rollouts(w http.ResponseWriter, req *http.Request) {
	st, err := s.adm.UpdateStatus(req.Context(), req.URL.Query().Get("version"))
	if st.Rollouts == nil {
		st.Rollouts = []admin.Rollout{}
	}
	if st.Agents == nil {
		st.Agents = []admin.AgentUpdate{}
	}
	reply(w, http.StatusOK, st, err)
}

// startRollout rolls a published version out, superseding the active
// rollout. Publishing stays with tether-relay release publish on the
// relay's host: the signing key never comes near the API.
func (s *Server) startRollout(w http.ResponseWriter, req *http.Request) {
	var body struct {
		Version string   `json:"version"`
		Percent int      `json:"percent"`
		Tenants []string `json:"tenants"`
		Agents  []string `json:"agents"`
		HaltAt  float64  `json:"halt_at"`
		Batch   int      `json:"batch"`
	}
	if e := decodeJSON(req, &body); e != nil {
		writeError(w, e)
		return
	}
	ro, warns, err := s.adm.As(actor(req)).StartRollout(req.Context(), admin.Rollout{Version: body.Version, Percent: body.Percent,
		Tenants: body.Tenants, Agents: body.Agents, HaltAt: body.HaltAt, Batch: body.Batch})
	if warns == nil {
		warns = []string{}
	}
	reply(w, http.StatusCreated, map[string]any{"rollout": ro, "warnings": warns}, err)
}
