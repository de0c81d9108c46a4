package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/tetherhq/tether/protocol"
)

// Status is what the status listener serves (GET /status): the agent's
// report, without the session fields, and what each connection slot is
// doing.
type Status struct {
	AgentID string `json:"agent_id"`
	Tenant  string `json:"tenant"`
	// AccessLog is the file the access log is written to (empty when it
	// is disabled); Report.AccessLogError says when it cannot be.
	AccessLog string `json:"access_log,omitempty"`
	// AccessLogWarning says that rotation deletes access-log records
	// less than a day old (accesslog.Log.Warning); empty otherwise.
	AccessLogWarning string `json:"access_log_warning,omitempty"`
	// AccessLogKey is the fingerprint of the access log's key in force
	// (LogKeyFile, accesslog.Fingerprint), AccessLogKeySince when it was
	// put in force (made, or the last rotation) and AccessLogKeyRotation
	// how often it is replaced (access_log.key_rotation, "off": never).
	// The tenant records the first key's fingerprint, which stays the pin
	// after rotations (tether-agent access-log --verify --key). Empty when
	// the log is disabled.
	AccessLogKey         string    `json:"access_log_key,omitempty"`
	AccessLogKeySince    time.Time `json:"access_log_key_since,omitzero"`
	AccessLogKeyRotation string    `json:"access_log_key_rotation,omitempty"`
	// CARootRefused says why the last renewal answer was refused for a
	// CA root that no root this agent trusts endorses (see checkEndorsed);
	// the agent keeps its roots and certificate. Empty once a renewal is
	// accepted.
	CARootRefused string `json:"ca_root_refused,omitempty"`
	// ProxyCAError says why the proxy_ca_file, changed since the agent
	// started, does not load: the proxy CAs last loaded stay in use.
	// Empty once it loads.
	ProxyCAError string `json:"proxy_ca_error,omitempty"`
	protocol.Report
	Sessions []SessionStatus `json:"sessions"`
	// Cluster is the relay list the relays sent (protocol.Relays), as
	// this agent ranks it: the relay its next connection would prefer
	// first. Empty when no relay sent one.
	Cluster []protocol.RelayInfo `json:"cluster,omitempty"`
	// StreamsOverLimit counts the streams the relays opened beyond the
	// agent's limit per connection (10 000), which it refused.
	StreamsOverLimit uint64 `json:"streams_over_limit,omitempty"`
	// Update is a self-update under way: a new version being tried,
	// confirmed, or on probation (see UpdateState). Absent otherwise.
	Update *UpdateState `json:"update,omitempty"`
}

// Connection slot states.
const (
	StateConnecting = "connecting" // dialling a relay
	StateConnected  = "connected"  // serving
	StateRetrying   = "retrying"   // waiting before the next attempt
)

// SessionStatus is one connection slot: the relay it uses or tries, and
// its session when connected.
type SessionStatus struct {
	Slot  int    `json:"slot"`
	Relay string `json:"relay"` // the address dialled
	// RelayID is the id of the relay the slot is connected to (from its
	// Welcome, or the listed relay dialled); empty when the relay gave
	// none.
	RelayID string `json:"relay_id,omitempty"`
	State   string `json:"state"`
	// Since is when the slot entered State (for a connected slot: when
	// its session started).
	Since        time.Time `json:"since"`
	SessionID    string    `json:"session_id,omitempty"`
	Transport    string    `json:"transport,omitempty"`
	TransportWhy string    `json:"transport_why,omitempty"`
	RTTMicros    int64     `json:"rtt_us,omitempty"`
	// LastError is why the slot's previous session ended or its last
	// connection attempt failed.
	LastError string `json:"last_error,omitempty"`
}

// slotTracker records what each connection slot is doing.
type slotTracker struct {
	mu    sync.Mutex // guards slots
	slots map[int]*slotState
}

type slotState struct {
	relay   string
	state   string
	since   time.Time
	s       *session // when connected
	lastErr string
}

// set records that slot is now in state with relay (and session s when
// connected); a non-nil err becomes its last error.
func (t *slotTracker) set(slot int, relay, state string, s *session, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.slots == nil {
		t.slots = make(map[int]*slotState)
	}
	st := t.slots[slot]
	if st == nil {
		st = &slotState{}
		t.slots[slot] = st
	}
	st.relay, st.state, st.since, st.s = relay, state, time.Now(), s
	if err != nil {
		st.lastErr = clipText(err.Error())
	}
}

// held lists the relays of the connected slots, in slot order.
func (t *slotTracker) held() []protocol.HeldRelay {
	var out []protocol.HeldRelay
	for _, ss := range t.snapshot() {
		if ss.State == StateConnected {
			out = append(out, protocol.HeldRelay{ID: ss.RelayID, Addr: ss.Relay})
		}
	}
	return out
}

func (t *slotTracker) snapshot() []SessionStatus {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]SessionStatus, 0, len(t.slots))
	for n, st := range t.slots {
		ss := SessionStatus{Slot: n, Relay: st.relay, State: st.state, Since: st.since.UTC(), LastError: st.lastErr}
		if s := st.s; s != nil {
			ss.SessionID, ss.Transport, ss.TransportWhy = s.welcome.SessionID, s.transport, s.why
			ss.RelayID = s.relayID
			ss.RTTMicros = s.rtt.Load() / int64(time.Microsecond)
		}
		out = append(out, ss)
	}
	slices.SortFunc(out, func(a, b SessionStatus) int { return a.Slot - b.Slot })
	return out
}

// Status returns the agent's status as the status listener serves it.
func (a *Agent) Status() Status {
	st := Status{AgentID: a.state.AgentID, Tenant: a.state.Tenant, Report: *a.Report(), Sessions: a.slots.snapshot(), Cluster: a.view.cluster(),
		StreamsOverLimit: a.streamsOverLimit.Load()}
	st.ConfigError = clipText(a.ConfigError()) // the whole message: the status is the tenant's
	st.ProxyCAError = clipText(a.ProxyCAError())
	if why := a.rootRefused.Load(); why != nil {
		st.CARootRefused = *why
	}
	if u := a.updState.Load(); u != nil {
		st.Update = u.state()
	}
	if a.alog != nil {
		st.AccessLog, st.AccessLogWarning = a.alog.Path(), a.alog.Warning()
		st.AccessLogKey, st.AccessLogKeySince = a.alog.KeyInForce()
		if st.AccessLogKey != "" {
			st.AccessLogKeyRotation = a.cfg.AccessLog.KeyRotation.String()
			if a.cfg.AccessLog.KeyRotation == 0 {
				st.AccessLogKeyRotation = DefaultKeyRotation.String()
			}
		}
	}
	return st
}

// serveStatus serves GET /status on cfg.StatusListen until ctx ends.
func (a *Agent) serveStatus(ctx context.Context, wg *sync.WaitGroup) error {
	ln, err := net.Listen("tcp", a.cfg.StatusListen)
	if err != nil {
		return fmt.Errorf("status listener: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(a.Status())
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	a.log.Info("status listener up", "addr", ln.Addr().String())
	wg.Go(func() { srv.Serve(ln) })
	wg.Go(func() {
		<-ctx.Done()
		srv.Close()
	})
	return nil
}
