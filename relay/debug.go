package relay

import (
	"encoding/json"
	"net/http"
	"net/http/pprof"
	"runtime"
	"runtime/debug"
)

// Stats is a snapshot of the relay's live state.
type Stats struct {
	AgentConnections int            `json:"agent_connections"`
	ByTransport      map[string]int `json:"by_transport"`
	Tenants          int            `json:"tenants_connected"`
	StreamsOpen      int64          `json:"streams_open"`
	FrontConnections int            `json:"front_connections"`
	Goroutines       int            `json:"goroutines"`
	// HandshakesFailed counts agent connections that failed TLS or
	// were refused at hello; HandshakesThrottled those turned away by the
	// handshake admission limit before any work was done.
	HandshakesFailed    int64 `json:"handshakes_failed"`
	HandshakesThrottled int64 `json:"handshakes_throttled"`
	// HandshakesSourceLimited counts agent connections turned away by the
	// bound per source address or network.
	HandshakesSourceLimited int64 `json:"handshakes_source_limited"`
	// HandshakesInProgress is the agent handshakes holding a slot now.
	HandshakesInProgress int `json:"handshakes_in_progress"`
	// FrontUnauthenticatedSources is the source addresses with front-door
	// connections that have not yet authenticated.
	FrontUnauthenticatedSources int `json:"front_unauthenticated_sources"`
	// LimitRefusals counts stream opens refused by a tenant limit.
	LimitRefusals int64 `json:"limit_refusals"`
	// StreamMemoryHeld is what the open streams are charged against
	// max_stream_memory, those through the front doors and those other
	// relays forwarded here together (0 when there is no cap).
	StreamMemoryHeld int64 `json:"stream_memory_held_bytes"`
	// StoreIsolated is true while the relay has lost its store and
	// another relay of the cluster reaches it: its agents were sent to
	// the other relays, and new ones are refused until the store is back.
	StoreIsolated bool `json:"store_isolated"`
	// StoreOutageGrace is true while the relay serves new connections
	// from what it last read, the store down for every relay it can ask
	// (Config.StoreOutageGrace).
	StoreOutageGrace bool   `json:"store_outage_grace"`
	HeapAlloc        uint64 `json:"heap_alloc_bytes"`
	HeapInuse        uint64 `json:"heap_inuse_bytes"`
	StackInuse       uint64 `json:"stack_inuse_bytes"`
	Sys              uint64 `json:"sys_bytes"`
}

// Stats returns a snapshot of connections, streams and memory.
func (r *Relay) Stats() Stats {
	s := Stats{ByTransport: map[string]int{}}
	tenants := map[string]bool{}
	for _, c := range r.sessions.Sessions().Select("", false, nil) {
		tenants[c.Tenant()] = true
		s.AgentConnections++
		s.ByTransport[c.Transport()]++
		s.StreamsOpen += c.Load()
	}
	s.Tenants = len(tenants)
	s.FrontConnections = r.doors.Open()
	hs := r.sessions.Stats()
	s.HandshakesFailed = hs.Failed.Load()
	s.HandshakesThrottled = hs.Throttled.Load()
	s.HandshakesSourceLimited = hs.SourceLimited.Load()
	s.HandshakesInProgress, _ = r.sessions.InProgress()
	s.FrontUnauthenticatedSources = r.doors.Unauthenticated()
	s.LimitRefusals = r.doors.LimitRefusals.Load()
	s.StreamMemoryHeld = r.mem.Held()
	s.StoreIsolated = r.isolated.Load()
	s.StoreOutageGrace = r.storeOutage()
	s.Goroutines = runtime.NumGoroutine()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	s.HeapAlloc, s.HeapInuse, s.StackInuse, s.Sys = ms.HeapAlloc, ms.HeapInuse, ms.StackInuse, ms.Sys
	return s
}

// debugHandler serves pprof profiles and /debug/tether (Stats as JSON) for
// the optional, loopback-only debug listener.
func (r *Relay) debugHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/debug/tether", func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Query().Get("gc") == "1" {
			// Settle the heap and hand freed pages back to the OS (as the
			// background scavenger would, given time) before measuring.
			debug.FreeOSMemory()
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(r.Stats())
	})
	return mux
}
