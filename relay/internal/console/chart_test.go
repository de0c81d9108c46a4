package console

import (
	"bytes"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay/internal/history"
)

var nan = math.NaN()

func chartTimes(n int) []time.Time {
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	out := make([]time.Time, n)
	for i := range out {
		out[i] = t0.Add(time.Duration(i) * 10 * time.Second)
	}
	return out
}

// A line breaks where a value is missing; a value with no neighbour is a
// dot; the scale is a round number above the largest value.
func TestLineChart(t *testing.T) {
	c := lineChart("x", "X", "", chartTimes(6), unitCount, []series{
		{Label: "a", Line: history.Line{1, 2, nan, 4, nan, 7}},
		{Label: "b", Line: history.Line{nan, nan, nan, nan, nan, nan}},
	})
	if c.Points != 4 {
		t.Errorf("points %d, want 4", c.Points)
	}
	if len(c.Lines) != 1 || strings.Count(c.Lines[0].Points, ",") != 2 {
		t.Errorf("lines %+v, want one of two points", c.Lines)
	}
	if len(c.Dots) != 2 {
		t.Errorf("dots %+v, want two (4 and 7 stand alone)", c.Dots)
	}
	if got := c.YTicks[2].Label; got != "10" {
		t.Errorf("top of the scale %q, want 10", got)
	}
	if len(c.Legend) != 2 || c.Legend[0].Value != "7" || c.Legend[1].Value != noValue {
		t.Errorf("legend %+v", c.Legend)
	}
	if e := lineChart("x", "X", "", chartTimes(2), unitCount, []series{{Label: "a", Line: history.Line{nan, nan}}}); e.Points != 0 || len(e.Lines)+len(e.Dots) != 0 {
		t.Errorf("a chart without values: %+v", e)
	}
}

// Bars stack in each interval; intervals with nothing draw nothing.
func TestStackedChart(t *testing.T) {
	c := stackedChart("x", "X", "", chartTimes(3), unitPerSecond, []series{
		{Label: "ok", Class: "ok", Line: history.Line{1, 0, 2}},
		{Label: "refused", Line: history.Line{3, nan, 0}},
	})
	if c.Points != 3 || len(c.Bars) != 3 {
		t.Fatalf("points %d, bars %+v; want 3 and 3", c.Points, c.Bars)
	}
	if c.YTicks[2].Label != "5/s" {
		t.Errorf("scale top %q, want 5/s (the sums are 4, 0, 2)", c.YTicks[2].Label)
	}
	// The first interval's bars touch: ok at the bottom, refused on it.
	okBar, refusedBar := c.Bars[0], c.Bars[2]
	if okBar.Class != "ok" || math.Abs(refusedBar.Y+refusedBar.H-okBar.Y) > 0.2 {
		t.Errorf("bars do not stack: %+v and %+v", okBar, refusedBar)
	}
}

// More series than a chart holds are summed as "others".
func TestTopSeries(t *testing.T) {
	var ss []series
	for i := range chartSeries + 3 {
		ss = append(ss, series{Label: string(rune('a' + i)), Line: history.Line{float64(i), nan}})
	}
	got := top(ss)
	if len(got) != chartSeries {
		t.Fatalf("%d series, want %d", len(got), chartSeries)
	}
	last := got[len(got)-1]
	if last.Label != "4 others" || last.Line[0] != 0+1+2+3 || !math.IsNaN(last.Line[1]) {
		t.Errorf("others: %+v, want 4 others summing 6", last)
	}
}

func TestScaleTop(t *testing.T) {
	for _, c := range []struct {
		v    float64
		u    unit
		want float64
	}{
		{0, unitCount, 1}, {3, unitCount, 5}, {0.004, unitSeconds, 0.005}, {120, unitCount, 200},
		{150 * 1024, unitBytesRate, 200 * 1024}, {3 << 20, unitBytesRate, 5 << 20}, {900, unitBytesRate, 1000},
	} {
		if got := scaleTop(c.v, c.u); math.Abs(got-c.want) > 1e-9*c.want {
			t.Errorf("scaleTop(%v, %v) = %v, want %v", c.v, c.u, got, c.want)
		}
	}
}

// A chart is drawn through the template, which escapes its labels.
func TestChartTemplateEscapes(t *testing.T) {
	c := lineChart("x", `<b>title</b>`, "", chartTimes(2), unitBytesRate, []series{{Label: `<script>alert(1)</script>`, Line: history.Line{1, 2048}}})
	var buf bytes.Buffer
	if err := parseDashPages()["overview"].ExecuteTemplate(&buf, "chart", c); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	if strings.Contains(out, "<script>") || strings.Contains(out, "<b>title") {
		t.Errorf("the chart holds markup from its labels:\n%s", out)
	}
	for _, want := range []string{`data-points="2"`, "<polyline", "&lt;script&gt;", "2.0 KiB/s"} {
		if !strings.Contains(out, want) {
			t.Errorf("the chart lacks %s:\n%s", want, out)
		}
	}
}
