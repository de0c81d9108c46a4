package relay

import (
	"net/http"
)

// routes registers the /api/v1/ endpoints on mux.
func (s *adminServer) routes(mux *http.ServeMux) {
	api := func(pattern string, methods map[string]http.HandlerFunc) {
		mux.Handle(pattern, s.authenticated(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			h := methods[req.Method]
			if h == nil && req.Method == http.MethodHead {
				h = methods[http.MethodGet]
			}
			if h == nil {
				allowed := make([]string, 0, len(methods))
				for m := range methods {
					allowed = append(allowed, m)
				}
				methodNotAllowed(w, allowed...)
				return
			}
			h(w, req)
		})))
	}
	mux.Handle("/api/", s.authenticated(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		writeError(w, apiErrorf(http.StatusNotFound, CodeNotFound, "no API endpoint %s", req.URL.Path))
	})))
	api("/api/v1/whoami", map[string]http.HandlerFunc{http.MethodGet: s.whoami})
	api("/api/v1/fleet", map[string]http.HandlerFunc{http.MethodGet: s.fleet})
}

func (s *adminServer) whoami(w http.ResponseWriter, req *http.Request) {
	op, _ := OperatorFrom(req.Context())
	writeJSON(w, http.StatusOK, op)
}

func (s *adminServer) fleet(w http.ResponseWriter, req *http.Request) {
	f, apiErr := fleetFilter(req)
	if apiErr != nil {
		writeError(w, apiErr)
		return
	}
	fl, err := s.r.Fleet(req.Context(), f)
	if err != nil {
		writeError(w, errorFrom(err))
		return
	}
	writeJSON(w, http.StatusOK, fl)
}

// fleetFilter reads ?tenant=&state=&unhealthy= .
func fleetFilter(req *http.Request) (FleetFilter, *APIError) {
	q := req.URL.Query()
	f := FleetFilter{Tenant: q.Get("tenant")}
	if s := q.Get("state"); s != "" {
		h, err := ParseHealth(s)
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
