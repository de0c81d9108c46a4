package session

import (
	"bufio"
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/tetherhq/tether/protocol"
)

// A hostile agent's report costs the relay a bounded amount whatever it
// holds: long strings are clipped (to valid UTF-8), and the service list
// and dial-failure map are capped.
func TestBoundReport(t *testing.T) {
	long := strings.Repeat("é", 10000) // 2 bytes a rune: clipping must not split one
	m := &protocol.Report{
		AgentVersion: long, OS: long, Arch: long, Hostname: long, Transport: long, TransportWhy: long,
		LastDialError: long, ConfigHash: long, ConfigError: long,
		DialFailures: map[string]uint64{},
	}
	for i := range 5000 {
		m.Services = append(m.Services, fmt.Sprintf("svc-%05d-%s", i, long))
		m.DialFailures[fmt.Sprintf("svc-%05d-%s", i, long)] = uint64(i)
	}
	got := boundReport(m)
	for name, s := range map[string]string{"agent_version": got.AgentVersion, "os": got.OS, "arch": got.Arch, "hostname": got.Hostname,
		"transport": got.Transport, "transport_why": got.TransportWhy, "last_dial_error": got.LastDialError, "config_hash": got.ConfigHash, "config_error": got.ConfigError} {
		if len(s) > maxReportString+len("…") || !utf8.ValidString(s) {
			t.Errorf("%s: %d bytes (valid UTF-8: %v), want at most %d, valid", name, len(s), utf8.ValidString(s), maxReportString+len("…"))
		}
	}
	if len(got.Services) != maxReportServices || len(got.DialFailures) != maxReportServices {
		t.Errorf("got %d services and %d dial-failure entries, want %d each", len(got.Services), len(got.DialFailures), maxReportServices)
	}
	size := 0
	for _, s := range got.Services {
		size += len(s)
	}
	for k := range got.DialFailures {
		size += len(k) + 8
	}
	if limit := 2 * maxReportServices * (maxReportString + 8); size > limit {
		t.Errorf("kept %d bytes of services and dial failures, want at most %d", size, limit)
	}
	// The caller's report is not changed, and the bounded one shares none
	// of its slices or maps.
	if len(m.Services) != 5000 || len(m.DialFailures) != 5000 || m.Hostname != long {
		t.Error("boundReport changed its argument")
	}
	got.Services[0] = "x"
	if m.Services[0] == "x" {
		t.Error("the bounded report shares its service list with the agent's")
	}

	// Small reports pass unchanged.
	small := &protocol.Report{AgentVersion: "1.2.3", Services: []string{"db"}, DialFailures: map[string]uint64{"db": 2}, ConfigError: "line 3: bad"}
	if b := boundReport(small); b.AgentVersion != "1.2.3" || len(b.Services) != 1 || b.DialFailures["db"] != 2 || b.ConfigError != "line 3: bad" {
		t.Errorf("small report changed: %+v", b)
	}
}

// The largest report a frame can carry — a map of as many tiny keys as fit
// in MaxMessageSize — is decoded and bounded to the caps.
func TestBoundReportFromLargestFrame(t *testing.T) {
	var b strings.Builder
	b.WriteString(`{"dial_failures":{`)
	for i := 0; b.Len() < protocol.MaxMessageSize-64; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"%x":1`, i)
	}
	b.WriteString(`}}`)
	payload := b.String()
	var frame bytes.Buffer
	frame.WriteByte(byte(protocol.TypeReport))
	n := len(payload)
	for n >= 0x80 {
		frame.WriteByte(byte(n) | 0x80)
		n >>= 7
	}
	frame.WriteByte(byte(n))
	frame.WriteString(payload)
	m, err := protocol.ReadMessage(bufio.NewReader(&frame))
	if err != nil {
		t.Fatal(err)
	}
	rep := m.(*protocol.Report)
	if len(rep.DialFailures) < 5000 {
		t.Fatalf("decoded %d keys; the test wants thousands", len(rep.DialFailures))
	}
	if got := boundReport(rep); len(got.DialFailures) != maxReportServices {
		t.Errorf("kept %d dial-failure entries, want %d", len(got.DialFailures), maxReportServices)
	}
}

// The relay notes when an agent's count of failed dials last went up.
func TestNoteReportDialFailures(t *testing.T) {
	c := &Conn{}
	t0 := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	steps := []struct {
		fails map[string]uint64
		want  time.Time // DialFailedAt after the report
	}{
		{nil, time.Time{}},
		{map[string]uint64{"db": 2}, t0.Add(time.Minute)},               // first failures seen
		{map[string]uint64{"db": 2}, t0.Add(time.Minute)},               // unchanged: no new failure
		{map[string]uint64{"db": 2, "api": 1}, t0.Add(3 * time.Minute)}, // one more
		{map[string]uint64{"db": 2, "api": 1}, t0.Add(3 * time.Minute)}, // unchanged
	}
	for i, s := range steps {
		c.noteReport(&protocol.Report{DialFailures: s.fails}, t0.Add(time.Duration(i)*time.Minute))
		if got := c.live().DialFailedAt; !got.Equal(s.want) {
			t.Fatalf("report %d: DialFailedAt %v, want %v", i, got, s.want)
		}
	}
}
