package plot

import (
	"image/color"
	"math"
	"strconv"
	"strings"

	gplot "gonum.org/v1/plot"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// pathColors gives each path (and outcome) one colour in every figure, from the Okabe–Ito
// palette (distinguishable with the common colour-vision deficiencies). The first keyword found
// in a series' name decides, in this order: "raw-quic" before "quic", "h2-tcp" before "tcp".
var pathColors = []struct {
	keywords []string
	color    color.RGBA
}{
	{[]string{"raw-quic", "raw quic"}, color.RGBA{86, 180, 233, 255}},             // sky blue
	{[]string{"reverseproxy", "reverse proxy"}, color.RGBA{204, 121, 167, 255}},   // reddish purple
	{[]string{"forwarded"}, color.RGBA{213, 94, 0, 255}},                          // vermillion
	{[]string{"local", "qkas"}, color.RGBA{0, 114, 178, 255}},                     // blue
	{[]string{"direct"}, color.RGBA{85, 85, 85, 255}},                             // dark grey
	{[]string{"h2-tcp", "http/2", "h2c"}, color.RGBA{230, 159, 0, 255}},           // orange
	{[]string{"succeeded", "success", "ok"}, color.RGBA{0, 158, 115, 255}},        // bluish green
	{[]string{"failed", "error"}, color.RGBA{213, 94, 0, 255}},                    // vermillion
	{[]string{"download"}, color.RGBA{0, 114, 178, 255}},                          // blue
	{[]string{"upload"}, color.RGBA{230, 159, 0, 255}},                            // orange
	{[]string{"rss", "memory"}, color.RGBA{0, 114, 178, 255}},                     // blue
	{[]string{"cpu"}, color.RGBA{213, 94, 0, 255}},                                // vermillion
	{[]string{"reconnect", "connect"}, color.RGBA{0, 158, 115, 255}},              // bluish green
	{[]string{"loaded", "latency", "p50", "p99"}, color.RGBA{204, 121, 167, 255}}, // reddish purple
}

// otherColors are for series that name no known path, by their index.
var otherColors = []color.RGBA{{0, 0, 0, 255}, {240, 228, 66, 255}, {0, 158, 115, 255}, {86, 180, 233, 255}}

// Color is the colour of the series called name (the i-th of its figure): the colour of the
// path it names, so that "local" is the same blue in every plot.
func Color(name string, i int) color.Color {
	n := strings.ToLower(name)
	for _, pc := range pathColors {
		for _, k := range pc.keywords {
			if containsWord(n, k) {
				return pc.color
			}
		}
	}
	return otherColors[i%len(otherColors)]
}

// containsWord reports whether k occurs in s not inside a longer word ("ok" is not in "broker").
func containsWord(s, k string) bool {
	for i := 0; ; {
		j := strings.Index(s[i:], k)
		if j < 0 {
			return false
		}
		j += i
		before := j == 0 || !isWordByte(s[j-1])
		after := j+len(k) == len(s) || !isWordByte(s[j+len(k)])
		if before && after {
			return true
		}
		i = j + 1
	}
}

func isWordByte(b byte) bool { return b >= 'a' && b <= 'z' || b >= '0' && b <= '9' }

// quantileDashes: p50 solid, p90 dash-dot, p99 dashed, p99.9 dotted; a "without …" comparison
// line is dotted too.
func quantileDashes(name string) []vg.Length {
	n := strings.ToLower(name)
	switch {
	case strings.Contains(n, "without"):
		return []vg.Length{vg.Points(1.5), vg.Points(3)}
	case strings.Contains(n, "p99.9"):
		return []vg.Length{vg.Points(2), vg.Points(2)}
	case strings.Contains(n, "p99"):
		return []vg.Length{vg.Points(7), vg.Points(3)}
	case strings.Contains(n, "p90"):
		return []vg.Length{vg.Points(7), vg.Points(2), vg.Points(2), vg.Points(2)}
	}
	return nil
}

// quantileGlyph: p50 circle, p90 ring, p99 triangle, p99.9 square, "without" cross; otherwise by
// index.
func quantileGlyph(name string, i int) draw.GlyphDrawer {
	n := strings.ToLower(name)
	switch {
	case strings.Contains(n, "without"):
		return draw.CrossGlyph{}
	case strings.Contains(n, "p99.9"):
		return draw.SquareGlyph{}
	case strings.Contains(n, "p99"):
		return draw.TriangleGlyph{}
	case strings.Contains(n, "p90"):
		return draw.RingGlyph{}
	case strings.Contains(n, "p50"):
		return draw.CircleGlyph{}
	}
	return []draw.GlyphDrawer{draw.CircleGlyph{}, draw.TriangleGlyph{}, draw.SquareGlyph{}, draw.CrossGlyph{}}[i%4]
}

// linearTicks labels 5–10 round values (steps of 1, 2, 2.5 or 5 × 10^k) with minor ticks
// between them: gonum's default often labels only two or three.
type linearTicks struct{}

func (linearTicks) Ticks(lo, hi float64) []gplot.Tick {
	if !(hi > lo) || math.IsInf(hi-lo, 0) {
		return []gplot.Tick{{Value: lo, Label: formatTick(lo, 1)}}
	}
	step := niceStep((hi - lo) / 6)
	var ticks []gplot.Tick
	for v := math.Ceil(lo/step) * step; v <= hi+step*1e-9; v += step {
		ticks = append(ticks, gplot.Tick{Value: v, Label: formatTick(v, step)})
		if m := v + step/2; m < hi {
			ticks = append(ticks, gplot.Tick{Value: m})
		}
	}
	if first := math.Ceil(lo/step)*step - step/2; first > lo {
		ticks = append(ticks, gplot.Tick{Value: first})
	}
	return ticks
}

// niceStep is the smallest of 1, 2, 2.5, 5 × 10^k at least raw.
func niceStep(raw float64) float64 {
	mag := math.Pow10(int(math.Floor(math.Log10(raw))))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*mag >= raw*(1-1e-9) {
			return m * mag
		}
	}
	return 10 * mag
}

// formatTick writes v with as many decimals as step needs, never in exponent form.
func formatTick(v, step float64) string {
	if math.Abs(v) < step*1e-9 {
		v = 0
	}
	dec := 0
	for s := step; s < 1-1e-9 && dec < 6; s *= 10 {
		dec++
	}
	if dec > 0 && math.Abs(step*math.Pow10(dec)-math.Round(step*math.Pow10(dec))) > 1e-6 {
		dec++ // 0.25
	}
	return humanNumber(v, dec)
}

// humanNumber writes 1500 as "1500", 20000 as "20k" and 3000000 as "3M".
func humanNumber(v float64, dec int) string {
	switch a := math.Abs(v); {
	case a >= 1e6 && math.Mod(a, 1e5) == 0:
		return strconv.FormatFloat(v/1e6, 'f', -1, 64) + "M"
	case a >= 1e4 && math.Mod(a, 100) == 0:
		return strconv.FormatFloat(v/1e3, 'f', -1, 64) + "k"
	}
	return strconv.FormatFloat(v, 'f', dec, 64)
}

// logTicks labels 1, 2 and 5 × 10^k (only 10^k over more than 3.5 decades) with minor ticks
// at the other integers × 10^k: gonum's LogTicks labels only powers of ten, as 1e+06.
type logTicks struct{}

func (logTicks) Ticks(lo, hi float64) []gplot.Tick {
	if lo <= 0 {
		lo = math.Min(1, hi/10)
	}
	decades := math.Log10(hi / lo)
	var ticks []gplot.Tick
	for e := math.Floor(math.Log10(lo)); math.Pow10(int(e)) <= hi; e++ {
		p := math.Pow10(int(e))
		for m := 1.0; m < 10; m++ {
			v := m * p
			if v < lo*(1-1e-9) || v > hi*(1+1e-9) {
				continue
			}
			label := ""
			if m == 1 || decades <= 3.5 && (m == 2 || m == 5) {
				label = humanNumber(v, max(0, -int(e)))
			}
			ticks = append(ticks, gplot.Tick{Value: v, Label: label})
		}
	}
	return ticks
}

// fractionTicks labels a 0–1 axis every 0.1.
func fractionTicks() []gplot.Tick {
	var ticks []gplot.Tick
	for i := 0; i <= 20; i++ {
		t := gplot.Tick{Value: float64(i) / 20}
		if i%2 == 0 {
			t.Label = strconv.FormatFloat(float64(i)/20, 'f', 1, 64)
		}
		ticks = append(ticks, t)
	}
	return ticks
}
