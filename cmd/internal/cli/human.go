package cli

import (
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// How tables show times, durations and sizes, the same in every command.
// JSON and YAML carry the raw values (RFC 3339 in UTC, nanoseconds,
// bytes).

// Since is t relative to now as people read it: "3m ago", or "in 2h"
// for a time to come; "-" for the zero time.
func Since(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t)
	if d < 0 {
		return "in " + Duration(-d)
	}
	if d < time.Second {
		return "just now"
	}
	return Duration(d) + " ago"
}

// When is t relative to now with the absolute time after it, for dates
// that matter as dates (expiries): "in 2h (2025-06-01 14:00 UTC)",
// "3d ago (…)"; "-" for the zero time.
func When(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return Since(t, now) + " (" + Absolute(t) + ")"
}

// Absolute is t in UTC to the minute, for tables: "2025-06-01 14:00 UTC".
func Absolute(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04 UTC")
}

// Timestamp is t in RFC 3339 with milliseconds, UTC, for tables that are
// logs (the audit trail).
func Timestamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02T15:04:05.000Z")
}

// Duration is d in at most two units, rounded down: "45s", "3m", "3m20s"
// under ten minutes, "2h", "2h5m", "3d", "3d4h", "45d", "2y30d".
func Duration(d time.Duration) string {
	if d < 0 {
		return "-" + Duration(-d)
	}
	const day, year = 24 * time.Hour, 365 * 24 * time.Hour
	two := func(a time.Duration, au string, b time.Duration, bu string) string {
		if b == 0 {
			return fmt.Sprintf("%d%s", a, au)
		}
		return fmt.Sprintf("%d%s%d%s", a, au, b, bu)
	}
	switch {
	case d < time.Second:
		return Latency(d)
	case d < time.Minute:
		return fmt.Sprintf("%ds", d/time.Second)
	case d < 10*time.Minute:
		return two(d/time.Minute, "m", d%time.Minute/time.Second, "s")
	case d < time.Hour:
		return fmt.Sprintf("%dm", d/time.Minute)
	case d < day:
		return two(d/time.Hour, "h", d%time.Hour/time.Minute, "m")
	case d < 10*day:
		return two(d/day, "d", d%day/time.Hour, "h")
	case d < year:
		return fmt.Sprintf("%dd", d/day)
	}
	return two(d/year, "y", d%year/day, "d")
}

// Latency is a short duration to three significant digits: "850µs",
// "1.23ms", "12.3s"; "-" for zero.
func Latency(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	switch {
	case d < time.Microsecond:
		return d.String()
	case d < time.Millisecond:
		return sig3(float64(d)/float64(time.Microsecond)) + "µs"
	case d < time.Second:
		return sig3(float64(d)/float64(time.Millisecond)) + "ms"
	}
	return sig3(d.Seconds()) + "s"
}

// Bytes is a size in IEC units to three significant digits: "512 B",
// "1.5 KiB", "12.3 MiB", "2 GiB".
func Bytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v, i := float64(n), -1
	for v >= unit && i < 5 {
		v /= unit
		i++
	}
	return sig3(v) + " " + "KMGTPE"[i:i+1] + "iB"
}

// sig3 is v with three significant digits (more left of the point), no
// trailing zeros.
func sig3(v float64) string {
	prec := 2
	switch {
	case v >= 100:
		prec = 0
	case v >= 10:
		prec = 1
	}
	s := strconv.FormatFloat(v, 'f', prec, 64)
	if strings.Contains(s, ".") {
		s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	}
	return s
}

// Limit is a limit where 0 means none: "unlimited", else the number.
func Limit[T int | int64 | float64](v T) string {
	if v == 0 {
		return "unlimited"
	}
	return fmt.Sprint(v)
}

// ParseBytes reads a size as people write it: a number of bytes ("4096"),
// or a number with a unit, IEC ("10MiB", "1.5 GiB", "512KiB", "10M" the
// same as "10MiB") or SI ("10MB", 10 000 000 bytes); "0" is zero.
// Units are case-insensitive but for the b/B of bits and bytes, which is
// read as bytes either way.
func ParseBytes(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := t, ""
	if i >= 0 {
		num, unit = t[:i], strings.TrimSpace(t[i:])
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || num == "" || v < 0 {
		return 0, fmt.Errorf("size %q: want a number of bytes, or one with a unit such as 512KiB, 10MiB or 1GB", s)
	}
	mult := map[string]float64{"": 1, "b": 1,
		"k": 1 << 10, "ki": 1 << 10, "kib": 1 << 10, "kb": 1e3,
		"m": 1 << 20, "mi": 1 << 20, "mib": 1 << 20, "mb": 1e6,
		"g": 1 << 30, "gi": 1 << 30, "gib": 1 << 30, "gb": 1e9,
		"t": 1 << 40, "ti": 1 << 40, "tib": 1 << 40, "tb": 1e12,
	}[strings.ToLower(unit)]
	if mult == 0 {
		return 0, fmt.Errorf("size %q: unknown unit %q (want B, KiB, MiB, GiB, TiB, or KB, MB, GB, TB)", s, unit)
	}
	n := v * mult
	if n >= 1<<62 {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return int64(n), nil
}

// Size is a flag value of bytes that accepts ParseBytes's forms and
// prints as Bytes does.
type Size int64

func (z *Size) String() string {
	if *z == 0 {
		return "0"
	}
	return strings.ReplaceAll(Bytes(uint64(*z)), " ", "")
}

// Set implements pflag.Value.
func (z *Size) Set(s string) error {
	n, err := ParseBytes(s)
	if err != nil {
		return err
	}
	*z = Size(n)
	return nil
}

// Type implements pflag.Value.
func (z *Size) Type() string { return "size" }

// Rate is a rate in bytes per second where 0 means none: "unlimited", or
// "10 MiB/s".
func Rate(bytesPerSecond int64) string {
	if bytesPerSecond <= 0 {
		return "unlimited"
	}
	return Bytes(uint64(bytesPerSecond)) + "/s"
}

// Printable is s as a table or a message may print it when s comes from
// elsewhere (a relay, a file anyone may have edited): control characters
// (tab, newline and escape included, C1 too), Unicode line and paragraph
// separators and bidirectional controls, and bytes that are not UTF-8 are
// written as Go escapes (\n, \x1b, \u2028, \xff), so that the text cannot
// start a row of its own, move the cursor, hide what follows or reorder
// it. Other text, backslashes included, is left as it is.
func Printable(s string) string {
	clean := true
	for _, r := range s {
		if unprintable(r) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i, r := range s {
		switch {
		case r == utf8.RuneError && !strings.HasPrefix(s[i:], "\uFFFD"):
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case unprintable(r):
			q := strconv.QuoteRuneToASCII(r)
			b.WriteString(q[1 : len(q)-1])
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

func unprintable(r rune) bool {
	switch {
	case r < 0x20, r >= 0x7f && r < 0xa0, r == utf8.RuneError:
		return true
	case r == 0x2028, r == 0x2029, r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069, r == 0x200e, r == 0x200f, r == 0x061c:
		return true
	}
	return false
}
