package console

import (
	"cmp"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tetherhq/tether/relay/internal/history"
)

// The dashboard's charts: SVG drawn on the server from the relay's recent
// history (relay/internal/history), through the "chart" template, so
// that html/template escapes every label and no script or inline style is
// needed. Colours are classes of dash.css.

// Geometry of a chart's viewBox: the plot area and the margins for the
// axis labels.
const (
	chartW, chartH             = 640, 190
	padL, padR, padT, padB     = 70, 10, 10, 22
	plotW, plotH               = chartW - padL - padR, chartH - padT - padB
	chartSeries                = 6 // series drawn before the rest are summed as "others"
	chartEmpty                 = "No data yet: the relay samples its state every few seconds."
	chartPalette               = 8 // classes c0 … c7
	chartTimeLayout            = "15:04"
	chartTimeLayoutWithSeconds = "15:04:05"
)

// chart is one chart as the template draws it.
type chart struct {
	ID    string // data-chart, for tests and styles
	Title string
	Note  string // a line under the title
	W, H  int
	// Lines are polylines (points "x,y x,y …"); Dots mark values with no
	// neighbour to join; Bars are rectangles.
	Lines  []chartPath
	Dots   []chartDot
	Bars   []chartBar
	YTicks []chartTick
	XTicks []chartTick
	Legend []chartKey
	// Points counts the values drawn; with none the chart says Empty.
	Points int
	Empty  string
	// Zero is the y of the value 0, for charts with bars both ways.
	Zero float64
	// Left, Right and Bottom bound the plot area, for the grid and the
	// time labels.
	Left, Right, Bottom float64
}

// newChart is an empty chart with the standard geometry.
func newChart(id, title, note string) chart {
	return chart{ID: id, Title: title, Note: note, W: chartW, H: chartH, Empty: chartEmpty,
		Left: padL, Right: chartW - padR, Bottom: chartH - 4}
}

type chartPath struct{ Class, Points string }

type chartDot struct {
	Class string
	X, Y  float64
}

type chartBar struct {
	Class      string
	X, Y, W, H float64
	Title      string
}

type chartTick struct {
	Pos   float64
	Label string
}

// chartKey is a legend entry: a series' colour, name and latest value.
type chartKey struct{ Class, Label, Value string }

// unit formats a chart's values.
type unit int

const (
	unitCount     unit = iota
	unitPerSecond      // events per second
	unitBytesRate      // bytes per second
	unitSeconds        // a latency
)

func (u unit) format(v float64) string {
	if math.IsNaN(v) {
		return noValue
	}
	switch u {
	case unitBytesRate:
		return humanBytes(uint64(max(v, 0))) + "/s"
	case unitSeconds:
		if v == 0 {
			return "0"
		}
		return humanRTT(time.Duration(v * float64(time.Second)))
	case unitPerSecond:
		return trimFloat(v) + "/s"
	}
	return trimFloat(v)
}

// trimFloat formats v with at most two decimals, none when it is whole.
func trimFloat(v float64) string {
	if v == math.Trunc(v) && math.Abs(v) < 1e15 {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	if math.Abs(v) >= 10 {
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}

// series is one named line of a chart.
type series struct {
	Label string
	Class string // "" takes the next colour of the palette
	Line  history.Line
}

// niceCeil rounds v up to 1, 2, 2.5 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*p >= v*(1-1e-9) {
			return m * p
		}
	}
	return 10 * p
}

// scaleTop is the top of a chart's scale for values up to v: a round
// number, in binary units for bytes.
func scaleTop(v float64, u unit) float64 {
	if u != unitBytesRate || v < 1024 {
		return niceCeil(v)
	}
	base := math.Pow(1024, math.Floor(math.Log(v)/math.Log(1024)))
	return niceCeil(v/base) * base
}

// last is the latest value of l that is not NaN.
func last(l history.Line) float64 {
	for i := len(l) - 1; i >= 0; i-- {
		if !math.IsNaN(l[i]) {
			return l[i]
		}
	}
	return math.NaN()
}

// total sums the values of l that are not NaN.
func total(l history.Line) float64 {
	var s float64
	for _, v := range l {
		if !math.IsNaN(v) {
			s += v
		}
	}
	return s
}

// top keeps the chartSeries series with the largest totals, in their
// order, and sums the others into one.
func top(ss []series) []series {
	if len(ss) <= chartSeries {
		return ss
	}
	ranked := slices.Clone(ss)
	slices.SortStableFunc(ranked, func(a, b series) int { return cmp.Compare(total(b.Line), total(a.Line)) })
	keep := map[string]bool{}
	for _, s := range ranked[:chartSeries-1] {
		keep[s.Label] = true
	}
	var out []series
	var others history.Line
	n := 0
	for _, s := range ss {
		if keep[s.Label] {
			out = append(out, s)
			continue
		}
		n++
		if others == nil {
			others = make(history.Line, len(s.Line))
			for i := range others {
				others[i] = math.NaN()
			}
		}
		for i, v := range s.Line {
			if !math.IsNaN(v) {
				others[i] = nanZero(others[i]) + v
			}
		}
	}
	return append(out, series{Label: strconv.Itoa(n) + " others", Line: others})
}

func nanZero(v float64) float64 {
	if math.IsNaN(v) {
		return 0
	}
	return v
}

// colour gives each series without a class the next of the palette.
func colour(ss []series) []series {
	out := slices.Clone(ss)
	next := 0
	for i := range out {
		if out[i].Class == "" {
			out[i].Class = "c" + strconv.Itoa(next%chartPalette)
			next++
		}
	}
	return out
}

// timeX places times along the plot: by time, the first at the left edge
// and the last at the right; a single time in the middle.
func timeX(times []time.Time) []float64 {
	xs := make([]float64, len(times))
	if len(times) == 0 {
		return xs
	}
	span := times[len(times)-1].Sub(times[0]).Seconds()
	for i, t := range times {
		if span <= 0 {
			xs[i] = padL + plotW/2
			continue
		}
		xs[i] = padL + plotW*t.Sub(times[0]).Seconds()/span
	}
	return xs
}

// timeTicks labels the first and last times (UTC), and one between when
// there is room.
func timeTicks(times []time.Time, xs []float64) []chartTick {
	if len(times) == 0 {
		return nil
	}
	layout := chartTimeLayout
	if times[len(times)-1].Sub(times[0]) < 5*time.Minute {
		layout = chartTimeLayoutWithSeconds
	}
	ticks := []chartTick{{xs[0], times[0].UTC().Format(layout)}}
	if len(times) > 2 {
		mid := len(times) / 2
		ticks = append(ticks, chartTick{xs[mid], times[mid].UTC().Format(layout)})
	}
	if len(times) > 1 {
		ticks = append(ticks, chartTick{xs[len(xs)-1], times[len(times)-1].UTC().Format(layout) + " UTC"})
	}
	return ticks
}

// yTicks labels 0, half and the top of the scale.
func yTicks(top float64, u unit, y func(float64) float64) []chartTick {
	return []chartTick{{y(0), u.format(0)}, {y(top / 2), u.format(top / 2)}, {y(top), u.format(top)}}
}

// lineChart draws ss as lines over times (a series of class "limit" is
// drawn dashed).
func lineChart(id, title, note string, times []time.Time, u unit, ss []series) chart {
	c := newChart(id, title, note)
	ss = colour(top(ss))
	maxV := 0.0
	for _, s := range ss {
		for _, v := range s.Line {
			if !math.IsNaN(v) {
				maxV = max(maxV, v)
				c.Points++
			}
		}
	}
	if c.Points == 0 {
		return c
	}
	scale := scaleTop(maxV, u)
	y := func(v float64) float64 { return round1(padT + plotH - plotH*v/scale) }
	xs := timeX(times)
	for _, s := range ss {
		var seg []string
		flush := func(i int) {
			switch len(seg) {
			case 0:
			case 1:
				c.Dots = append(c.Dots, chartDot{Class: s.Class, X: round1(xs[i]), Y: y(s.Line[i])})
			default:
				c.Lines = append(c.Lines, chartPath{Class: s.Class, Points: strings.Join(seg, " ")})
			}
			seg = seg[:0]
		}
		for i, v := range s.Line {
			if math.IsNaN(v) {
				flush(i - 1)
				continue
			}
			seg = append(seg, strconv.FormatFloat(round1(xs[i]), 'f', -1, 64)+","+strconv.FormatFloat(y(v), 'f', -1, 64))
		}
		flush(len(s.Line) - 1)
		c.Legend = append(c.Legend, chartKey{Class: s.Class, Label: s.Label, Value: u.format(last(s.Line))})
	}
	c.YTicks = yTicks(scale, u, y)
	c.XTicks = timeTicks(times, xs)
	return c
}

// barX places bar i of n: its left edge and width (at most 24, so that
// a short history does not draw one wall).
func barX(i, n int) (x, w float64) {
	band := float64(plotW) / float64(max(n, 1))
	w = min(max(band*0.8, 1), 24)
	return round1(padL + band*float64(i) + (band-w)/2), round1(w)
}

// stackedChart draws ss as bars stacked in each interval.
func stackedChart(id, title, note string, times []time.Time, u unit, ss []series) chart {
	c := newChart(id, title, note)
	ss = colour(ss)
	sums := make([]float64, len(times))
	for _, s := range ss {
		for i, v := range s.Line {
			if !math.IsNaN(v) && i < len(sums) {
				sums[i] += v
				if v > 0 {
					c.Points++
				}
			}
		}
	}
	if c.Points == 0 {
		return c
	}
	scale := scaleTop(slices.Max(sums), u)
	y := func(v float64) float64 { return round1(padT + plotH - plotH*v/scale) }
	base := make([]float64, len(times))
	for _, s := range ss {
		for i, v := range s.Line {
			if math.IsNaN(v) || v <= 0 || i >= len(times) {
				continue
			}
			x, w := barX(i, len(times))
			top := y(base[i] + v)
			c.Bars = append(c.Bars, chartBar{Class: s.Class, X: x, Y: top, W: w, H: round1(y(base[i]) - top),
				Title: s.Label + " " + u.format(v) + " at " + times[i].UTC().Format(chartTimeLayoutWithSeconds)})
			base[i] += v
		}
		c.Legend = append(c.Legend, chartKey{Class: s.Class, Label: s.Label, Value: u.format(total(s.Line) / float64(max(len(times), 1)))})
	}
	c.YTicks = yTicks(scale, u, y)
	xs := make([]float64, len(times))
	for i := range times {
		x, w := barX(i, len(times))
		xs[i] = x + w/2
	}
	c.XTicks = timeTicks(times, xs)
	return c
}

// upDownChart draws up as bars above the axis and down as bars below, in
// each interval: connects and disconnects.
func upDownChart(id, title, note string, times []time.Time, up, down series) chart {
	c := newChart(id, title, note)
	maxV := 0.0
	for _, s := range []series{up, down} {
		for _, v := range s.Line {
			if !math.IsNaN(v) {
				maxV = max(maxV, v)
				c.Points++
			}
		}
	}
	if c.Points == 0 {
		return c
	}
	scale := niceCeil(maxV)
	half := float64(plotH) / 2
	c.Zero = padT + half
	for _, s := range []struct {
		series
		sign float64
	}{{up, -1}, {down, 1}} {
		for i, v := range s.Line {
			if math.IsNaN(v) || v <= 0 || i >= len(times) {
				continue
			}
			x, w := barX(i, len(times))
			h := round1(half * v / scale)
			top := c.Zero
			if s.sign < 0 {
				top -= h
			}
			c.Bars = append(c.Bars, chartBar{Class: s.Class, X: x, Y: round1(top), W: w, H: h,
				Title: trimFloat(v) + " " + s.Label + " at " + times[i].UTC().Format(chartTimeLayoutWithSeconds)})
		}
		c.Legend = append(c.Legend, chartKey{Class: s.Class, Label: s.Label, Value: trimFloat(total(s.Line)) + " in all"})
	}
	c.YTicks = []chartTick{{round1(padT), trimFloat(scale)}, {c.Zero, "0"}, {round1(padT + plotH), trimFloat(scale)}}
	xs := make([]float64, len(times))
	for i := range times {
		x, w := barX(i, len(times))
		xs[i] = x + w/2
	}
	c.XTicks = timeTicks(times, xs)
	return c
}

func round1(v float64) float64 { return math.Round(v*10) / 10 }
