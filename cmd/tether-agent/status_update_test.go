package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/agent"
)

// The status shows a self-update under way: the version on probation,
// when its probation ends, and the stops without a clean exit so far.
func TestStatusShowsUpdate(t *testing.T) {
	now := time.Date(2026, 12, 7, 9, 0, 0, 0, time.UTC)
	var out bytes.Buffer
	printStatus(&out, agent.Status{Update: &agent.UpdateState{Version: "2.0.0", From: "1.0.0", State: "probation",
		UncleanStops: 1, UncleanStopsMax: 3, ProbationEnds: now.Add(4 * time.Minute)}}, now)
	want := "2.0.0 (from 1.0.0) on probation until 2026-12-07T09:04:00Z (in 4m0s); 1 stops without a clean exit, the previous version comes back at 3"
	if !strings.Contains(out.String(), "\nupdate ") || !strings.Contains(out.String(), want) {
		t.Errorf("status:\n%s\nwant the line %q", out.String(), want)
	}
	out.Reset()
	printStatus(&out, agent.Status{Update: &agent.UpdateState{Version: "3.0.0\x1b[2J", From: "2.0.0", State: "trial"}}, now)
	if s := out.String(); !strings.Contains(s, "trying 3.0.0") || strings.Contains(s, "\x1b") {
		t.Errorf("status of a trial:\n%q", s)
	}
	out.Reset()
	printStatus(&out, agent.Status{}, now)
	if strings.Contains(out.String(), "update") {
		t.Errorf("status with no update under way:\n%s", out.String())
	}
}
