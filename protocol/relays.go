package protocol

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strconv"
)

// The cluster's relay list (type 16).
//
// Several relays may share one store and sit behind one DNS name. An agent
// whose Hello lists CapRelays is told, on its control stream, every live
// relay of the cluster and the address at which each one is reached on
// its own; it then keeps its connections on distinct relays of the list
// and never needs the shared name again while one of them answers.
//
// A relay that will send the list announces CapRelays in its Welcome and
// sends a first Relays message right after the Welcome, then a new one
// whenever the list changes (a relay joins, leaves, or starts to drain,
// or an address changes). Each message is the whole list: it replaces the
// previous one. The sending relay is in it. A relay that drains to stop
// also sends GoAway with reason GoAwayLeaving.
//
// Agents that do not know the message ignore it (it arrives as *Unknown).

// CapRelays in a Hello says that the agent wants the cluster's relay list
// (Relays); in a Welcome, that the relay sends it.
const CapRelays = "relays"

// Bounds of a Relays message, checked by Validate when it is encoded and
// decoded.
const (
	// MaxRelays is the most entries a Relays message may hold. A relay
	// of a larger cluster sends a subset.
	MaxRelays = 256
	// MaxRelayIDLen bounds a relay id, in bytes.
	MaxRelayIDLen = 64
	// maxRelayHostLen bounds the host of a relay address (a DNS name is
	// at most 253 bytes).
	maxRelayHostLen = 253
)

// Relays is the list of the live relays of the cluster, sent by a relay to
// its agents (CapRelays).
type Relays struct {
	// Relays are every live relay of the cluster, draining ones included,
	// in no particular order: ids and addresses are unique.
	Relays RelayList `json:"relays"`
}

// RelayInfo is one relay of a Relays list.
type RelayInfo struct {
	// ID names the relay within the cluster (as Welcome.RelayID): 1 to
	// MaxRelayIDLen letters, digits, '.', '_' or '-'.
	ID string `json:"id"`
	// Addr is where agents reach this relay on its own: host:port of its
	// agent port, as the relay advertises it (an IP address or a DNS
	// name that leads to this relay only). The agent authenticates the
	// relay by its certificate, never by this name.
	Addr string `json:"addr"`
	// Draining marks a relay that is leaving: agents open no new
	// connection to it and move the ones they have elsewhere.
	Draining bool `json:"draining,omitempty"`
}

// RelayList is the list of a Relays message. Its JSON decoding stops at
// MaxRelays+1 entries, so a hostile list costs no more than that.
type RelayList []RelayInfo

// UnmarshalJSON decodes a JSON array of at most MaxRelays relays (or null).
func (l *RelayList) UnmarshalJSON(b []byte) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if tok == nil {
		return nil // null: unchanged, as encoding/json does
	}
	if d, ok := tok.(json.Delim); !ok || d != '[' {
		return fmt.Errorf("relays: want an array, got %v", tok)
	}
	list := RelayList{}
	for dec.More() {
		if len(list) == MaxRelays {
			return fmt.Errorf("relays: more than %d", MaxRelays)
		}
		var r RelayInfo
		if err := dec.Decode(&r); err != nil {
			return fmt.Errorf("relays[%d]: %w", len(list), err)
		}
		list = append(list, r)
	}
	if _, err := dec.Token(); err != nil { // the closing ]
		return err
	}
	*l = list
	return nil
}

// Validate checks the bounds of the list: at most MaxRelays entries, each
// with a valid id and address, no id or address twice. It returns an
// *Error with CodeBadRequest.
func (m *Relays) Validate() error {
	if len(m.Relays) > MaxRelays {
		return Errorf(CodeBadRequest, "relays: %d entries, at most %d", len(m.Relays), MaxRelays)
	}
	ids := make(map[string]bool, len(m.Relays))
	addrs := make(map[string]bool, len(m.Relays))
	for i, r := range m.Relays {
		if err := ValidateRelayID(r.ID); err != nil {
			return Errorf(CodeBadRequest, "relays[%d]: %v", i, err)
		}
		if err := ValidateRelayAddr(r.Addr); err != nil {
			return Errorf(CodeBadRequest, "relays[%d] %s: %v", i, r.ID, err)
		}
		if ids[r.ID] {
			return Errorf(CodeBadRequest, "relays[%d]: id %s twice", i, r.ID)
		}
		if addrs[r.Addr] {
			return Errorf(CodeBadRequest, "relays[%d] %s: address %s twice", i, r.ID, r.Addr)
		}
		ids[r.ID], addrs[r.Addr] = true, true
	}
	return nil
}

// ValidateRelayID checks a relay id: 1 to MaxRelayIDLen letters, digits,
// '.', '_' or '-'.
func ValidateRelayID(id string) error {
	if id == "" || len(id) > MaxRelayIDLen {
		return fmt.Errorf("relay id of %d bytes: want 1 to %d", len(id), MaxRelayIDLen)
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !isAlnum(c) && c != '.' && c != '_' && c != '-' {
			return fmt.Errorf("relay id %q: only letters, digits, '.', '_' and '-'", id)
		}
	}
	return nil
}

// ValidateRelayAddr checks an address at which agents reach one relay:
// host:port with a port from 1 to 65535 and a host that is an IP address
// (not unspecified, not multicast, no zone) or a DNS name. A relay checks
// its own advertised address with it before it sends it to agents.
func ValidateRelayAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q: want host:port", addr)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 || port[0] == '0' {
		return fmt.Errorf("address %q: port %q: want 1 to 65535", addr, port)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.Zone() != "" || ip.IsUnspecified() || ip.IsMulticast() {
			return fmt.Errorf("address %q: %s is not an address agents can dial", addr, host)
		}
		return nil
	}
	if !isDNSName(host) {
		return fmt.Errorf("address %q: host %q is neither an IP address nor a DNS name", addr, host)
	}
	return nil
}

// isDNSName reports whether s is a DNS name: dot-separated labels of 1 to
// 63 letters, digits, '-' or '_', none starting or ending with '-', at
// most 253 bytes, not all digits and dots (that would be an IP address
// written wrongly).
func isDNSName(s string) bool {
	if s == "" || len(s) > maxRelayHostLen {
		return false
	}
	label, alpha := 0, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '.':
			if label == 0 || s[i-1] == '-' {
				return false
			}
			label = 0
			continue
		case c == '-':
			if label == 0 {
				return false
			}
		case isAlnum(c) || c == '_':
		default:
			return false
		}
		if c < '0' || c > '9' {
			alpha = true
		}
		label++
		if label > 63 {
			return false
		}
	}
	return label > 0 && s[len(s)-1] != '-' && alpha
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}
