package console

import (
	"encoding/json"
	"fmt"
	"html/template"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tetherhq/tether/relay/admin"
)

// The dashboard's formatting: numbers people read at a glance, with units.

// noValue stands for a value the relay does not have.
const noValue = "–"

// dashFuncs are the functions the dashboard's templates call.
func dashFuncs() template.FuncMap {
	return template.FuncMap{
		"bytes":      humanBytes,
		"rtt":        humanRTT,
		"ago":        humanAgo,
		"until":      humanUntil,
		"dur":        humanDuration,
		"stamp":      stamp,
		"dash":       orDash,
		"noValue":    func() string { return noValue },
		"pair":       func(now time.Time, v any) dashPair { return dashPair{now, v} },
		"num":        humanCount,
		"state":      func(h admin.Health) string { return "st-" + string(h) },
		"uptime":     reportUptime,
		"unixms":     func(ms int64) time.Time { return unixMillis(ms) },
		"healths":    func() []admin.Health { return admin.Healths },
		"auditText":  auditDetail,
		"inc":        func(i int) int { return i + 1 },
		"event":      eventLabel,
		"tokenState": tokenState,
		"lifetimes":  func() any { return tokenLifetimes },
		"list":       func(s ...string) []string { return s },
		"uint":       func(n int64) uint64 { return uint64(max(n, 0)) },
		"contains":   strings.Contains,
	}
}

// dashPair hands a part of a page the time "now" with its data.
type dashPair struct {
	Now time.Time
	V   any
}

// humanBytes formats n bytes with a binary unit: "0 B", "512 B", "1.5 KiB",
// "12 MiB".
func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatUint(n, 10) + " B"
	}
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	v, i := float64(n)/unit, 0
	for v >= unit && i < len(units)-1 {
		v /= unit
		i++
	}
	if v < 10 {
		return strconv.FormatFloat(v, 'f', 1, 64) + " " + units[i]
	}
	return strconv.FormatFloat(v, 'f', 0, 64) + " " + units[i]
}

// humanRTT formats a round-trip time: "850 µs", "12.3 ms", "1.20 s"; zero
// is unknown.
func humanRTT(d time.Duration) string {
	switch {
	case d <= 0:
		return noValue
	case d < time.Millisecond:
		return strconv.FormatInt(d.Microseconds(), 10) + " µs"
	case d < 100*time.Millisecond:
		return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 1, 64) + " ms"
	case d < time.Second:
		return strconv.FormatInt(d.Milliseconds(), 10) + " ms"
	}
	return strconv.FormatFloat(d.Seconds(), 'f', 2, 64) + " s"
}

// humanDuration formats a span coarsely, in its largest unit: "45 s",
// "3 m", "5 h", "12 d".
func humanDuration(d time.Duration) string {
	if d < 0 {
		d = -d
	}
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%d s", int64(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%d m", int64(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%d h", int64(d/time.Hour))
	}
	return fmt.Sprintf("%d d", int64(d/(24*time.Hour)))
}

// humanAgo says how long before now t was: "3 m ago"; "–" for the zero
// time, "just now" for a time not before now.
func humanAgo(now, t time.Time) string {
	if t.IsZero() {
		return noValue
	}
	d := now.Sub(t)
	if d < time.Second {
		return "just now"
	}
	return humanDuration(d) + " ago"
}

// humanUntil says how long after now t is: "in 5 d", or "expired 2 h ago"
// once it has passed; "–" for the zero time.
func humanUntil(now, t time.Time) string {
	if t.IsZero() {
		return noValue
	}
	if d := t.Sub(now); d > 0 {
		return "in " + humanDuration(d)
	}
	return "expired " + humanAgo(now, t)
}

// stamp is t in UTC for a tooltip or a detail line; "" for the zero time.
func stamp(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02 15:04:05 UTC")
}

// orDash is s, or "–" when s is empty.
func orDash(s string) string {
	if s == "" {
		return noValue
	}
	return s
}

// humanCount formats a count with thin-space thousands separators.
func humanCount(n any) string {
	var s string
	switch v := n.(type) {
	case int:
		s = strconv.FormatInt(int64(v), 10)
	case int64:
		s = strconv.FormatInt(v, 10)
	case uint64:
		s = strconv.FormatUint(v, 10)
	default:
		return fmt.Sprint(n)
	}
	neg := s[0] == '-'
	if neg {
		s = s[1:]
	}
	out := make([]byte, 0, len(s)+len(s)/3*3)
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, "\u202f"...)
		}
		out = append(out, s[i])
	}
	if neg {
		return "-" + string(out)
	}
	return string(out)
}

func unixMillis(ms int64) time.Time {
	if ms <= 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms)
}

// reportUptime is how long the agent process has run, from its report's
// start time.
func reportUptime(now time.Time, startedMs int64) string {
	t := unixMillis(startedMs)
	if t.IsZero() || t.After(now) {
		return noValue
	}
	return humanDuration(now.Sub(t))
}

// auditDetail renders an audit record's detail as "key=value" pairs in key
// order. Values come partly from agents (an enrolment's hostname, an
// update's error), so that none passes for pairs of its own a string is
// quoted as Go quotes it unless it is plain (no space, "=", quote or
// unprintable character), and lists and objects are written as JSON.
func auditDetail(d map[string]any) string {
	if len(d) == 0 {
		return ""
	}
	keys := slices.Sorted(maps.Keys(d))
	var b []byte
	for i, k := range keys {
		if i > 0 {
			b = append(b, ' ')
		}
		b = append(b, k...)
		b = append(b, '=')
		switch v := d[k].(type) {
		case string:
			if plainDetail(v) {
				b = append(b, v...)
			} else {
				b = strconv.AppendQuote(b, v)
			}
		case nil, bool, float64, int, int64, uint64:
			b = fmt.Append(b, v)
		default:
			j, err := json.Marshal(v)
			if err != nil {
				b = strconv.AppendQuote(b, fmt.Sprint(v))
				continue
			}
			b = append(b, j...)
		}
	}
	return string(b)
}

// plainDetail reports whether s may be shown unquoted in an audit
// record's detail: not empty, and no space, "=", quote or character
// strconv would escape.
func plainDetail(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r == ' ' || r == '=' || r == '"' || !strconv.IsPrint(r) {
			return false
		}
	}
	return true
}
